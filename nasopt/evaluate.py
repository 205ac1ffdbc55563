"""``nasopt evaluate``: an ensemble on the held-out test fold of the split it was searched on.

The ensemble file records its study's data settings, split and the patients the search saw.
The test fold is rebuilt from those; if any of its patients was in the search split (other
data, or other split settings), evaluation is refused: those numbers would not be held out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasopt.config import StudyConfig, apply_overrides
from nasopt.data.noduleset import NoduleSet
from nasopt.data.prepare import load_data
from nasopt.data.splits import study_sets
from nasopt.ensemble import Ensemble, load_ensemble
from nasopt.errors import ConfigError, DataError
from nasopt.metrics import N_BOOT, binary_metrics, bootstrap_intervals
from nasopt.model import count_params


@dataclass
class Scored:
    """One model's metrics on one set: point estimates and 95% bootstrap intervals."""

    name: str
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    params: int | None = None
    weight: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "params": self.params,
            "weight": self.weight,
            "metrics": {
                k: {"value": _json(v), "low": _json(self.intervals[k][0]), "high": _json(self.intervals[k][1])}
                for k, v in self.metrics.items()
            },
        }


def _json(value: float) -> float | None:
    """NaN (AUC of a one-class set) as null: strict JSON has no NaN."""
    return None if math.isnan(value) else value


def score(name: str, labels: np.ndarray, prob: np.ndarray, seed: int = 0, **extra: Any) -> Scored:
    return Scored(name, binary_metrics(labels, prob), bootstrap_intervals(labels, prob, N_BOOT, seed=seed), **extra)


@dataclass
class Evaluation:
    path: Path
    n_test: int
    n_malignant: int
    rows: list[Scored]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "test_nodules": self.n_test,
            "test_malignant": self.n_malignant,
            "bootstrap_resamples": N_BOOT,
            "notes": self.notes,
            "results": [r.to_json() for r in self.rows],
        }


def held_out_set(ensemble: Ensemble, data_overrides: list[str] | None = None) -> tuple[NoduleSet, list[str]]:
    """The test fold of the split the ensemble's study used, and notes about the data."""
    header = ensemble.header
    raw = apply_overrides(
        {"data": dict(header.data)}, [o if o.startswith("data.") else f"data.{o}" for o in data_overrides or []]
    )
    try:
        # [train] only bounds the crop size here; the ensemble's own input size is what runs.
        cfg = StudyConfig.model_validate(
            {**raw, "split": header.split, "train": {"input_size": ensemble.input_size, "max_shift": 0}}
        )
    except ValueError as exc:
        raise ConfigError(f"--data: {str(exc).splitlines()[-1].strip()}") from None
    ns = load_data(cfg.data, progress=False)
    sets = study_sets(cfg, ns)
    seen = set(header.search_patients) & set(sets.test.patients.tolist())
    if seen:
        raise DataError(
            f"{len(seen)} test patient(s) (e.g. {sorted(seen)[0]}) were in the search split of study "
            f"{header.study!r}; evaluate on the data and split the ensemble was exported from"
        )
    notes = []
    if ns.fingerprint() != header.data_fingerprint:
        notes.append("the data differs from the data the search ran on; no test patient was seen by the search")
    if ns.source == "phantom":
        notes.append("LIDC phantom: real annotations, synthetic CT intensities; not clinical figures")
    return sets.test, notes


def evaluate(path: str | Path, data_overrides: list[str] | None = None, seed: int = 0) -> Evaluation:
    """Ensemble and member metrics on the held-out test fold, with 95% bootstrap intervals."""
    ensemble = load_ensemble(path)
    test, notes = held_out_set(ensemble, data_overrides)
    prob, members = ensemble.predict(test.crops)
    params = [count_params(m.network) for m in ensemble.members]
    rows = [score("ensemble", test.labels, prob, seed, params=sum(params), weight=1.0)]
    for i, entry in enumerate(ensemble.header.members):
        name, weight = f"trial {entry.model.trial}", float(ensemble.weights[i])
        rows.append(score(name, test.labels, members[:, i], seed, params=params[i], weight=weight))
    return Evaluation(Path(path), len(test), int(test.labels.sum()), rows, notes)
