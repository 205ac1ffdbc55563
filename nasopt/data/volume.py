"""Reading CT volumes with SimpleITK: a ``.mhd``/``.mha``, ``.nii``/``.nii.gz`` file or a folder
holding one DICOM series, as a float32 image in Hounsfield units with its geometry.

SimpleITK is lenient where a prediction must not be: it reads a truncated NIfTI file with the
missing voxels as 0 HU and a short MetaImage data file with only a message on stderr, and ITK,
GDCM and MetaIO print multi-line messages straight to file descriptor 2. This module refuses
the first two and folds the third into one-line errors.
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nasopt.data.badinput import BadItem
from nasopt.data.geometry import check_finite
from nasopt.errors import DataError

#: File suffixes read as CT volumes (a folder is read as one DICOM series).
VOLUME_SUFFIXES: tuple[str, ...] = (".mhd", ".mha", ".nii", ".nii.gz")

#: Bytes per voxel of each MetaImage ElementType.
_ELEMENT_BYTES = {
    "MET_UCHAR": 1,
    "MET_CHAR": 1,
    "MET_USHORT": 2,
    "MET_SHORT": 2,
    "MET_UINT": 4,
    "MET_INT": 4,
    "MET_ULONG": 8,
    "MET_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def check_metaimage(mhd: Path) -> None:
    """Raise :class:`BadItem` when the header is unreadable or its data file is absent or short.

    SimpleITK's own message for these is a multi-line ITK exception; this names the file and
    the fix in one line.
    """
    try:
        lines = [line.partition("=") for line in mhd.read_text(errors="replace").splitlines()]
        header = {key.strip(): value.strip() for key, sep, value in lines if sep}
    except OSError as exc:
        raise BadItem(mhd, f"unreadable header ({exc})") from exc
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        element = header["ElementType"]
        data_file = header["ElementDataFile"]
    except (KeyError, ValueError) as exc:
        raise BadItem(
            mhd, f"not a MetaImage header (DimSize/ElementType/ElementDataFile missing or malformed: {exc})"
        ) from exc
    if len(dims) != 3:
        raise BadItem(mhd, f"a CT volume has 3 dimensions, the header says DimSize = {header['DimSize']}")
    if data_file == "LOCAL" or header.get("CompressedData", "False").lower() == "true":
        return  # inline or compressed data: size cannot be checked from the file; SimpleITK will
    raw = mhd.parent / data_file
    if not raw.is_file():
        raise BadItem(mhd, f"its data file {raw.name} is missing; download it again next to the .mhd")
    need = int(np.prod(dims)) * _ELEMENT_BYTES.get(element, 1) * int(header.get("ElementNumberOfChannels", "1"))
    have = raw.stat().st_size
    if have < need:
        raise BadItem(raw, f"holds {have} bytes, {mhd.name} needs {need}: the file is truncated; download it again")


def refuse_non_finite(array: np.ndarray, where: str) -> None:
    """:func:`~nasopt.data.geometry.check_finite`, with a fix that fits a single file (no --skip-bad)."""
    try:
        check_finite(array, where)
    except DataError as exc:
        raise DataError(
            f"{str(exc).rsplit('; ', 1)[0]}; replace them (e.g. with -1000 HU) and save the file again"
        ) from None


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Catch what C++ (ITK, GDCM, MetaIO) writes to file descriptor 2; yields a list that holds its
    lines afterwards. SimpleITK's readers print multi-line messages there, some even when they succeed."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            lines.extend(" ".join(line.split()) for line in text.splitlines() if line.strip())


def _sitk_reason(exc: Exception, printed: list[str]) -> str:
    """One line from a SimpleITK exception (its first lines are C++ source locations) and what it printed."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else "SimpleITK could not read it"
    for prefix in ("sitk::ERROR: ", "ITK ERROR: "):
        reason = reason.removeprefix(prefix)
    return "; ".join([reason, *printed[:2]])


def load_volume(path: Path) -> Any:  # -> sitk.Image (float32 HU)
    """The CT volume at ``path`` as a float32 SimpleITK image in HU (DICOM rescale applied)."""
    import SimpleITK as sitk

    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warnings are multi-line stderr noise
    try:
        image = _read_series(path) if path.is_dir() else _read_file(path)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if image.GetDimension() != 3:
        raise DataError(f"{path}: a CT volume has 3 dimensions, this image has {image.GetDimension()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: {image.GetNumberOfComponentsPerPixel()} values per voxel; a CT volume has one (HU)")
    refuse_non_finite(sitk.GetArrayViewFromImage(image), str(path))
    return image


def _read_file(path: Path) -> Any:
    import SimpleITK as sitk

    name = path.name.lower()
    if name.endswith(".mhd"):
        try:  # SimpleITK reads a short data file with a stderr message and no error
            check_metaimage(path)
        except BadItem as bad:
            fix = "" if "again" in bad.reason else "; export the volume again as .mhd with its data file"
            raise DataError(f"{bad}{fix}") from None
    elif name.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    try:
        with _captured_stderr() as printed:
            return sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as exc:
        reason = _sitk_reason(exc, printed)
        raise DataError(f"{path}: unreadable image ({reason}); check the file is complete or export it again") from None


def _check_nifti(path: Path) -> None:
    """Refuse a NIfTI file shorter than its header says: ITK reads the missing voxels as 0 HU, silently."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(540)
            expected = _nifti_bytes(header)
            if expected is None:
                return  # not a NIfTI header: SimpleITK will say so
            have = len(header)
            while chunk := handle.read(1 << 22):
                have += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable or truncated ({exc}); copy or export the volume again") from None
    if have < expected:
        raise DataError(
            f"{path}: holds {have} bytes, its header needs {expected}: the file is truncated; copy or export it again"
        )


def _nifti_bytes(header: bytes) -> int | None:
    """Bytes a NIfTI-1 or NIfTI-2 file needs (voxel offset plus voxels), from its header; None if not NIfTI."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            dims = struct.unpack(order + "8q", header[16:80])
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    return max(offset, 0) + int(np.prod([max(int(d), 1) for d in dims[1 : dims[0] + 1]])) * bitpix // 8


def _read_series(folder: Path) -> Any:
    import SimpleITK as sitk

    try:
        with _captured_stderr() as printed:
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise DataError(f"{folder}: cannot list DICOM series ({_sitk_reason(exc, printed)})") from None
    if not series:
        raise DataError(f"{folder}: no DICOM series in this folder; pass a folder holding one series' .dcm files")
    if len(series) > 1:
        raise DataError(
            f"{folder}: holds {len(series)} DICOM series ({', '.join(series)}); "
            "pass a folder holding only one series (move each series to its own folder)"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        with _captured_stderr() as printed:
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
            image = reader.Execute()
    except RuntimeError as exc:
        raise DataError(f"{folder}: unreadable DICOM series ({_sitk_reason(exc, printed)})") from None
    key = "ITK_non_uniform_sampling_deviation"
    if image.HasMetaDataKey(key):
        raise DataError(
            f"{folder}: the slices are unevenly spaced (deviation {image.GetMetaData(key)} mm): slices are missing "
            "or two series are mixed; pass a complete series"
        )
    return image
