"""NoduleMNIST3D: a MedMNIST-format .npz (tests/synthetic.py), read back as a NoduleSet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nasopt.data.contract import Run
from nasopt.data.noduleset import NoduleSet
from nasopt.data.sources.nodulemnist3d import prepare_nodulemnist3d
from nasopt.errors import DataError
from tests.synthetic import SIZES, medmnist_arrays, write_npz  # tests/test_cli.py imports them from here

QUIET = Run(progress=False)


def test_nodulemnist3d_keeps_values_labels_and_splits(tmp_path: Path) -> None:
    arrays = medmnist_arrays(side=32)
    ns = prepare_nodulemnist3d(write_npz(tmp_path / "n.npz", arrays), crop_size=32, run=QUIET)
    assert ns.source == "nodulemnist3d" and ns.crops.shape == (10, 32, 32, 32) and ns.crops.dtype == np.int16
    expected = np.concatenate([arrays[f"{s}_images"] for s in SIZES]).astype(np.int16)
    assert np.array_equal(ns.crops, expected)  # same size: the uint8 values, untouched
    assert ns.labels.tolist() == np.concatenate([arrays[f"{s}_labels"][:, 0] for s in SIZES]).tolist()
    assert ns.folds.tolist() == [0] * 5 + [1] * 2 + [2] * 3  # type: ignore[union-attr]
    assert ns.params["intensity"] == "uint8" and ns.params["splits"] == {"train": 0, "val": 1, "test": 2}
    assert ns.meta[5]["patient"] == "val-0" and len(set(ns.patients)) == 10  # one patient per sample
    # the cache round trip keeps folds and params
    back = NoduleSet.load(ns.save(tmp_path / "cache" / "nodulemnist3d.safetensors"))
    assert back.folds.tolist() == ns.folds.tolist() and back.params["intensity"] == "uint8"  # type: ignore[union-attr]


def test_nodulemnist3d_resizes_28_to_crop_size(tmp_path: Path) -> None:
    arrays = medmnist_arrays(side=28)
    # a bright cube in the first train image's centre must stay centred after resizing
    arrays["train_images"][0] = 10
    arrays["train_images"][0, 11:17, 11:17, 11:17] = 250
    ns = prepare_nodulemnist3d(write_npz(tmp_path / "n.npz", arrays), crop_size=48, run=QUIET)
    assert ns.crops.shape == (10, 48, 48, 48) and ns.params["native_size"] == 28
    assert 0 <= ns.crops.min() and ns.crops.max() <= 255
    bright = np.argwhere(ns.crops[0] > 130)
    assert np.abs(bright.mean(axis=0) - 23.5).max() < 0.01
    assert len(bright) == pytest.approx((6 * 48 / 28) ** 3, rel=0.15)


def test_nodulemnist3d_missing_file_and_not_npz(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        prepare_nodulemnist3d(tmp_path / "absent.npz", run=QUIET)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz"):
        prepare_nodulemnist3d(tmp_path / "junk.npz", run=QUIET)


def test_nodulemnist3d_missing_key(tmp_path: Path) -> None:
    arrays = medmnist_arrays()
    del arrays["val_labels"]
    path = write_npz(tmp_path / "n.npz", arrays)
    with pytest.raises(DataError, match=r"n\.npz: missing key\(s\) \['val_labels'\]"):
        prepare_nodulemnist3d(path, run=QUIET)


def test_nodulemnist3d_wrong_dtype(tmp_path: Path) -> None:
    arrays = medmnist_arrays()
    arrays["test_images"] = arrays["test_images"].astype(np.float32)
    with pytest.raises(DataError, match="test_images has dtype float32"):
        prepare_nodulemnist3d(write_npz(tmp_path / "n.npz", arrays), run=QUIET)


def test_nodulemnist3d_wrong_shape(tmp_path: Path) -> None:
    arrays = medmnist_arrays()
    arrays["train_images"] = arrays["train_images"][:, :, :, :20]
    with pytest.raises(DataError, match=r"train_images has shape \(5, 28, 28, 20\)"):
        prepare_nodulemnist3d(write_npz(tmp_path / "n.npz", arrays), run=QUIET)
    arrays = medmnist_arrays()
    arrays["val_labels"] = np.zeros((2, 3), np.uint8)
    with pytest.raises(DataError, match=r"val_labels has shape \(2, 3\)"):
        prepare_nodulemnist3d(write_npz(tmp_path / "m.npz", arrays), run=QUIET)


def test_nodulemnist3d_skip_bad_drops_the_split_and_reports_it(tmp_path: Path) -> None:
    arrays = medmnist_arrays()
    arrays["val_images"] = arrays["val_images"].astype(np.int32)
    report = tmp_path / "nodulemnist3d.skipped.json"
    run = Run(progress=False, skip_bad=True, report_path=report)
    ns = prepare_nodulemnist3d(write_npz(tmp_path / "n.npz", arrays), crop_size=32, run=run)
    assert sorted(set(ns.folds.tolist())) == [0, 2] and len(ns) == 8  # type: ignore[union-attr]
    skipped = json.loads(report.read_text())["skipped"]
    assert len(skipped) == 1 and "val_images has dtype int32" in skipped[0]["reason"]
    assert skipped[0]["item"].endswith("n.npz")
