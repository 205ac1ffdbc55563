"""The LIDC phantom's Hounsfield units: a CT-like crop painted around a nodule mask.

:func:`paint_hu` is a pure function of the mask, the readers' ratings, the slice thickness and
a random generator. It paints lung parenchyma at about -850 HU with smooth texture,
vessel-like tubes that keep clear of the nodule, a nodule whose density follows the texture
rating (ground glass about -700 .. solid about +20 HU, part-solid as core and rim), soft
margins, spicules, internal structure, calcification patterns (+300..+800 HU), partial-volume
blur and noise (sigma 25 HU). The phantom (:mod:`nasopt.data.sources.phantom`) supplies the masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_LUNG_HU = -850.0
#: texture rating 1 (ground glass) .. 5 (solid) -> mean nodule HU
_TEXTURE_HU = np.array([-700.0, -500.0, -300.0, -100.0, 20.0])
#: internal structure 2 fluid, 3 fat, 4 air (1 soft tissue adds nothing)
_INTERNAL_HU = {2: 10.0, 3: -100.0, 4: -920.0}


def paint_hu(
    mask: np.ndarray, ratings: Mapping[str, float], slice_thickness: float, rng: np.random.Generator
) -> np.ndarray:
    """An int16 HU crop of ``mask``'s shape around a 1 mm nodule mask (nodule at the centre).

    ``ratings`` are the readers' median ratings (``texture``, ``margin``, ``spiculation``,
    ``calcification``, ``internal_structure``); ``slice_thickness`` (mm) sets the slice
    profile's blur along z; ``rng`` makes every random choice, so the same generator state
    gives the same crop.
    """
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
    mask: np.ndarray, depth: np.ndarray, ratings: Mapping[str, float], rng: np.random.Generator
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
    for _ in range(round(2.0 * (float(rating) - 1.0))):
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
