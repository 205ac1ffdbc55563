"""Checkpoint files: exact round trips, and refusal of pickles, truncated, tampered and foreign files."""

import json
import os
import pickle
import stat

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nasopt.artifacts.checkpoint import DIGEST_KEY, HEADER_KEY, CheckpointHeader, load_model, save_model
from nasopt.ensemble.module import load_ensemble
from nasopt.errors import DataError
from nasopt.model import Architecture, build_network

ARCH = Architecture(((4,), (8,), (8,)), True, (True, False, True), 2)


def saved(tmp_path):
    torch.manual_seed(0)
    net = build_network(ARCH).eval()
    header = CheckpointHeader(arch=ARCH.to_dict(), norm=(-700.0, 300.0), input_size=32, metrics={"auc": 0.9}, trial=3)
    return net, save_model(tmp_path / "m.safetensors", net.state_dict(), header)


def test_round_trip_rebuilds_the_network_exactly(tmp_path):
    net, path = saved(tmp_path)
    back, header = load_model(path)
    assert header.architecture == ARCH and header.trial == 3 and header.norm == (-700.0, 300.0)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x)[0], net(x)[0])
    assert not list(tmp_path.glob("*.tmp"))


class _Payload:
    """Unpickling this would create a file: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipped", [True, False])
def test_a_pickle_file_is_refused_and_never_unpickled(tmp_path, zipped):
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.pt"
    torch.save({"weights": _Payload(marker)}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(DataError, match="pickle"):
        load_model(path)
    with pytest.raises(DataError, match="pickle"):
        load_ensemble(path)
    assert not marker.exists()
    # The same payload really does run when unpickled: the test above could fail.
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_a_truncated_file_is_refused(tmp_path):
    _, path = saved(tmp_path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match="truncated"):
            load_model(path)


def test_changed_tensor_bytes_are_refused(tmp_path):
    _, path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(8)  # the last weights, header untouched
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="modified"):
        load_model(path)


def rewrite(path, edit_header):
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta[HEADER_KEY])
    edit_header(header)
    meta[HEADER_KEY] = json.dumps(header)
    save_file(tensors, path, metadata=meta)


def test_a_header_that_disagrees_with_its_tensors_is_refused(tmp_path):
    _, path = saved(tmp_path)
    rewrite(path, lambda h: h["arch"].update(stages=[[8], [8], [16]]))  # digest still matches the tensors
    with pytest.raises(DataError, match="do not fit the header's architecture"):
        load_model(path)


def test_foreign_and_mismatched_files_are_refused(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, foreign)
    with pytest.raises(DataError, match="without a nasopt header"):
        load_model(foreign)
    _, path = saved(tmp_path)
    with pytest.raises(DataError, match="model file where an ensemble was expected"):
        load_ensemble(path)
    rewrite(path, lambda h: h.update(unknown_field=1))
    with pytest.raises(DataError, match="invalid nasopt header"):
        load_model(path)
    with safe_open(path, framework="pt") as f:
        assert DIGEST_KEY in f.metadata()


def test_written_files_are_readable_as_the_umask_allows(tmp_path):
    # Temp files are created 0600; a checkpoint or cache shared on a cluster must not stay that way.
    old = os.umask(0o022)
    try:
        _, path = saved(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
