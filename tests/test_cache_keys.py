"""Data caches are keyed by their input: a different or changed input is never served another's
cache, and what a killed run leaves behind is cleaned up (nasopt/data/prepare.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from nasopt.config.schema import DataSection
from nasopt.data.lidc_db import pylidc_version
from nasopt.data.prepare import cache_path, load_data, prepare, settings_key
from nasopt.errors import DataError
from tests.conftest import assert_user_error, nasopt
from tests.synthetic import UID_0957, medmnist_arrays, scan, slices_around, write_luna_volume, write_npz
from tests.test_noduleset import kill_mid_write


def _mnist(tmp_path: Path, npz: Path | None = None) -> DataSection:
    return DataSection(source="nodulemnist3d", cache_dir=str(tmp_path / "cache"), npz=None if npz is None else str(npz))


def _smaller(n: int) -> dict[str, np.ndarray]:
    """MedMNIST arrays with only ``n`` train samples."""
    arrays = medmnist_arrays()
    arrays["train_images"], arrays["train_labels"] = arrays["train_images"][:n], arrays["train_labels"][:n]
    return arrays


def test_the_three_commands_of_issue_12(tmp_path: Path) -> None:
    good = write_npz(tmp_path / "good.npz", medmnist_arrays())
    other = write_npz(tmp_path / "other.npz", _smaller(2))
    nan = medmnist_arrays()
    for key in [k for k in nan if k.endswith("_images")]:
        nan[key] = np.full(nan[key].shape, np.nan, np.float32)
    nan_file = write_npz(tmp_path / "nan.npz", nan)

    first = nasopt(tmp_path, "data", "prepare", "--source", "nodulemnist3d", "--npz", str(good))
    assert first.returncode == 0 and "10 nodules" in first.stdout, first.stderr
    second = nasopt(tmp_path, "data", "prepare", "--source", "nodulemnist3d", "--npz", str(other))
    assert second.returncode == 0 and "7 nodules" in second.stdout, second.stderr
    assert_user_error(
        nasopt(tmp_path, "data", "prepare", "--source", "nodulemnist3d", "--npz", str(nan_file)),
        "nan.npz",
        "dtype float32",
    )
    assert len(list((tmp_path / "storage" / "cache").glob("*.safetensors"))) == 2


def test_a_different_file_gives_a_different_cache_and_counts(tmp_path: Path) -> None:
    good = write_npz(tmp_path / "good.npz", medmnist_arrays())
    other = write_npz(tmp_path / "other.npz", _smaller(2))
    ns_good, path_good = prepare(_mnist(tmp_path, good), progress=False)
    ns_other, path_other = prepare(_mnist(tmp_path, other), progress=False)
    assert path_good != path_other and path_good.is_file() and path_other.is_file()
    assert (len(ns_good), len(ns_other)) == (10, 7)
    assert ns_other.params["input"]["path"] == str(other) and ns_other.params["input"]["bytes"] == other.stat().st_size


@pytest.mark.parametrize("damage", ["nan", "missing key"])
def test_a_bad_file_after_a_good_one_is_refused(tmp_path: Path, damage: str) -> None:
    prepare(_mnist(tmp_path, write_npz(tmp_path / "good.npz", medmnist_arrays())), progress=False)
    arrays = medmnist_arrays()
    if damage == "nan":
        arrays["val_images"] = np.full(arrays["val_images"].shape, np.nan, np.float32)
    else:
        del arrays["val_labels"]
    bad = write_npz(tmp_path / "bad.npz", arrays)
    with pytest.raises(DataError, match=r"bad\.npz: (val_images has dtype float32|missing key)") as info:
        prepare(_mnist(tmp_path, bad), progress=False)
    assert "\n" not in str(info.value)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1  # the good one, untouched


def test_the_same_file_renamed_keeps_its_cache(tmp_path: Path) -> None:
    first = write_npz(tmp_path / "a.npz", medmnist_arrays())
    _, path = prepare(_mnist(tmp_path, first), progress=False)
    written = path.stat().st_mtime_ns
    moved = first.rename(tmp_path / "b.npz")
    assert prepare(_mnist(tmp_path, moved), progress=False)[1] == path and path.stat().st_mtime_ns == written


@pytest.fixture
def luna_root(tmp_path: Path) -> Path:
    """A LUNA16 folder with a few slices of LIDC-IDRI-0957 around its nodule."""
    found = scan(UID_0957)
    (target,) = found.nodules
    write_luna_volume(tmp_path / "luna", 2, found, target, slices=slices_around(found, target, 3))
    return tmp_path / "luna"


def _luna(root: Path, cache: Path, **settings: object) -> DataSection:
    return DataSection(source="luna16", cache_dir=str(cache), luna_root=str(root), crop_size=32, **settings)


def test_touching_a_file_in_a_folder_invalidates_the_cache(luna_root: Path, tmp_path: Path) -> None:
    data = _luna(luna_root, tmp_path / "cache")
    ns, path = prepare(data, progress=False)
    assert prepare(data, progress=False)[1] == path  # unchanged: the same cache
    raw = next(luna_root.rglob("*.raw"))
    stat = raw.stat()
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = cache_path(data)
    assert touched != path and not touched.is_file()
    assert prepare(data, progress=False)[1] == touched and touched.is_file()
    assert ns.params["input"]["files"] == 2 and ns.params["pylidc"] == pylidc_version()


def test_moving_an_unchanged_folder_keeps_its_cache(luna_root: Path, tmp_path: Path) -> None:
    _, path = prepare(_luna(luna_root, tmp_path / "cache"), progress=False)
    written = path.stat().st_mtime_ns
    moved = luna_root.rename(tmp_path / "moved")
    assert prepare(_luna(moved, tmp_path / "cache"), progress=False)[1] == path
    assert path.stat().st_mtime_ns == written  # loaded, not prepared again


def test_settings_key_holds_what_shapes_the_output(tmp_path: Path) -> None:
    def key(**settings: object) -> str:
        return settings_key(DataSection(**settings))

    phantom = key()
    assert phantom == key(cache_dir="elsewhere") and phantom == key(npz="unread.npz")  # not settings of the phantom
    assert len({phantom, key(seed=1), key(crop_size=64), key(max_scans=5), key(ambiguous="benign")}) == 5
    mnist = key(source="nodulemnist3d")
    assert mnist == key(source="nodulemnist3d", min_readers=4)  # MedMNIST's own labels: no reader policy
    assert key(source="luna16") != key(source="luna16", min_readers=4) != key(source="lidc", min_readers=4)


def test_a_search_reads_the_cache_of_the_input_it_names(tmp_path: Path) -> None:
    good = write_npz(tmp_path / "good.npz", medmnist_arrays())
    prepare(_mnist(tmp_path, good), progress=False)
    assert len(load_data(_mnist(tmp_path))) == 10  # no input named: the one cache of these settings
    other = write_npz(tmp_path / "other.npz", _smaller(2))
    prepare(_mnist(tmp_path, other), progress=False)
    with pytest.raises(DataError, match="2 prepared nodulemnist3d caches fit these settings.*set data.npz"):
        load_data(_mnist(tmp_path))
    assert (len(load_data(_mnist(tmp_path, good))), len(load_data(_mnist(tmp_path, other)))) == (10, 7)
    write_npz(good, _smaller(3))  # changed since it was prepared
    with pytest.raises(DataError, match="no prepared nodulemnist3d data for .*good.npz as it is now"):
        load_data(_mnist(tmp_path, good))
    other.unlink()  # a worker that cannot reach the input: the cache prepared from that path
    assert len(load_data(_mnist(tmp_path, other))) == 7


def test_the_next_prepare_removes_the_temp_files_of_a_killed_one(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    kill_mid_write(cache / "nodulemnist3d-x.safetensors")
    assert len(list(cache.glob("*.tmp"))) == 1
    prepare(_mnist(tmp_path, write_npz(tmp_path / "n.npz", medmnist_arrays())), progress=False)
    assert not list(cache.glob("*.tmp")) and len(list(cache.glob("*.safetensors"))) == 1
