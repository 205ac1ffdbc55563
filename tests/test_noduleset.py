import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from nasopt.atomic import atomic_write, remove_stale_temps
from nasopt.data.noduleset import NoduleSet
from nasopt.errors import DataError
from tests.conftest import blob_set


def test_cache_round_trip_is_exact(tmp_path):
    ns = blob_set(n=10, side=12)
    ns.folds = np.arange(10) % 3
    path = ns.save(tmp_path / "c" / "set.safetensors")
    back = NoduleSet.load(path)
    assert np.array_equal(back.crops, ns.crops) and back.crops.dtype == np.int16
    assert np.array_equal(back.labels, ns.labels) and np.array_equal(back.folds, ns.folds)
    assert back.meta == ns.meta and back.source == "toy" and back.params == ns.params
    assert [p.name for p in path.parent.iterdir()] == ["set.safetensors"]  # no temp files left


def test_a_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = blob_set(n=4, side=8).save(tmp_path / "set.safetensors")
    before = path.read_bytes()
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("interrupted mid-write")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["set.safetensors"]


def kill_mid_write(path):
    """Start writing ``path`` with atomic_write in another process and kill it there (SIGKILL: no
    cleanup runs), as a killed ``nasopt data prepare`` would; its temp file stays behind."""
    kill = (
        "import os, signal, sys\n"
        "from nasopt.atomic import atomic_write\n"
        "with atomic_write(sys.argv[1]) as tmp:\n"
        "    open(tmp, 'wb').write(b'half a file')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", kill, str(path)], check=False)
    assert killed.returncode == -signal.SIGKILL


def test_stale_temp_files_go_and_a_live_writers_stays(tmp_path):
    kill_mid_write(tmp_path / "dead.safetensors")
    (stale,) = tmp_path.glob("dead.safetensors.*.tmp")
    with atomic_write(tmp_path / "live.safetensors") as live:
        assert remove_stale_temps(tmp_path) == [stale]
        assert os.path.exists(live) and not stale.exists()  # the writer at work keeps its temp file
        with open(live, "wb") as handle:
            handle.write(b"whole")
    assert (tmp_path / "live.safetensors").read_bytes() == b"whole"
    assert remove_stale_temps(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["live.safetensors"]


def test_damaged_or_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such data cache"):
        NoduleSet.load(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(DataError, match="not a readable nasopt data cache"):
        NoduleSet.load(bad)


def test_failed_save_keeps_the_old_cache(tmp_path):
    path = blob_set(n=4, side=8).save(tmp_path / "set.safetensors")
    before = path.read_bytes()
    broken = blob_set(n=4, side=8)
    broken.meta[0]["not_json"] = object()
    with pytest.raises(TypeError):
        broken.save(path)
    assert path.read_bytes() == before
    assert len(list(tmp_path.iterdir())) == 1


def test_inconsistent_set_is_rejected():
    with pytest.raises(DataError):
        NoduleSet(np.zeros((3, 8, 8, 8), np.int16), np.zeros(2, np.int64), [{}] * 3, "x")
