"""``nasopt evaluate``: an ensemble on the held-out test fold of the split it was searched on.

The ensemble file records its study's data settings, split and the patients the search saw.
The test fold is rebuilt from those; if any of its patients was in the search split (other
data, or other split settings), evaluation is refused: those numbers would not be held out.

Beside the ensemble and its members, every evaluation scores what a reader asks first (see
:mod:`nasopt.evaluation.baselines`): a size baseline, and where the source carries the readers' ratings a
ratings reference, both fitted on the search split and scored on the same test nodules, with
the paired bootstrap interval of the AUC difference and the AUC over size-matched pairs.
Thresholds come from the ensemble's header (chosen on validation at export); a baseline's
threshold comes from the same rule on its own search-split predictions. The test fold fits
nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasopt.config.schema import StudyConfig, apply_overrides
from nasopt.data.noduleset import NoduleSet
from nasopt.data.prepare import load_data
from nasopt.data.sources import PHANTOM_CAVEAT
from nasopt.data.splits import StudySets, study_sets
from nasopt.ensemble.calibration import choose_threshold, parse_operating_point
from nasopt.ensemble.module import DEFAULT_THRESHOLD, Ensemble, load_ensemble
from nasopt.errors import ConfigError, DataError
from nasopt.evaluation import baselines
from nasopt.evaluation.metrics import (
    N_BOOT,
    SIZE_MATCH_MM,
    binary_metrics,
    bootstrap_intervals,
    paired_difference,
    size_matched_auc,
)
from nasopt.model import count_params


@dataclass
class Scored:
    """One model's metrics on one set: point estimates, 95% bootstrap intervals, the threshold
    its decisions used, and its AUC over size-matched benign-malignant pairs (AUC, pairs)."""

    name: str
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    params: int | None = None
    weight: float | None = None
    threshold: float = DEFAULT_THRESHOLD
    size_matched: tuple[float, int] | None = None
    role: str = "model"  # model | baseline | reference

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.name,
            "role": self.role,
            "params": self.params,
            "weight": self.weight,
            "threshold": self.threshold,
            "metrics": {
                k: {"value": _json(v), "low": _json(self.intervals[k][0]), "high": _json(self.intervals[k][1])}
                for k, v in self.metrics.items()
            },
        }
        if self.size_matched is not None:
            out["size_matched_auc"] = {"value": _json(self.size_matched[0]), "pairs": self.size_matched[1]}
        return out


@dataclass(frozen=True)
class Comparison:
    """``model``'s AUC minus ``other``'s on the same nodules, with the paired bootstrap interval."""

    model: str
    other: str
    difference: float
    low: float
    high: float
    metric: str = "auc"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "minus": self.other,
            "metric": self.metric,
            "difference": _json(self.difference),
            "low": _json(self.low),
            "high": _json(self.high),
        }

    def line(self) -> str:
        return (
            f"{self.model} minus {self.other}: {self.metric.upper()} {self.difference:+.3f} "
            f"(paired 95% interval {self.low:+.3f} to {self.high:+.3f})"
        )


def _json(value: float) -> float | None:
    """NaN (AUC of a one-class set) as null: strict JSON has no NaN."""
    return None if math.isnan(value) else value


def diameters(ns: NoduleSet) -> np.ndarray | None:
    """Every nodule's diameter in mm, or None where the source records none."""
    found = [m.get("diameter_mm") for m in ns.meta]
    return None if any(d is None for d in found) else np.asarray(found, dtype=np.float64)


def score(
    name: str,
    labels: np.ndarray,
    prob: np.ndarray,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    diameters_mm: np.ndarray | None = None,
    match_mm: float = SIZE_MATCH_MM,
    **extra: Any,
) -> Scored:
    matched = None if diameters_mm is None else size_matched_auc(labels, prob, diameters_mm, match_mm)
    return Scored(
        name,
        binary_metrics(labels, prob, threshold),
        bootstrap_intervals(labels, prob, N_BOOT, seed=seed, threshold=threshold),
        threshold=threshold,
        size_matched=matched,
        **extra,
    )


#: Row roles of the baselines, in the order they are shown.
BASELINE_ROLES = {baselines.SIZE_BASELINE: "baseline", baselines.RATINGS_REFERENCE: "reference"}
REFERENCE_NOTE = (
    f"{baselines.RATINGS_REFERENCE}: log diameter and the readers' median ratings; a reference, not a competitor "
    "(ratings are not known for a new patient)"
)


def fit_baselines(
    train_meta: list[dict[str, Any]], train_labels: np.ndarray, test_meta: list[dict[str, Any]], rule: str | None
) -> tuple[dict[str, tuple[np.ndarray, float]], list[str]]:
    """({name: (test probabilities, threshold)}, notes) of the size baseline and the ratings
    reference, fitted on the training nodules' metadata and labels. ``rule`` (an operating point
    such as ``youden``) picks each one's threshold on its own training predictions; None keeps
    0.5. A baseline whose metadata the source lacks is left out, with the reason in the notes."""
    fitted, notes = {}, []
    for kind in BASELINE_ROLES:
        why = baselines.missing(kind, train_meta + test_meta)
        if why:
            notes.append(why)
            continue
        both = baselines.fit_predict(kind, train_meta, train_labels, train_meta + test_meta)
        on_train, on_test = both[: len(train_meta)], both[len(train_meta) :]
        t = (
            DEFAULT_THRESHOLD
            if rule is None
            else choose_threshold(train_labels, on_train, *parse_operating_point(rule))
        )
        fitted[kind] = (on_test, t)
    if baselines.RATINGS_REFERENCE in fitted:
        notes.append(REFERENCE_NOTE)
    return fitted, notes


def against(
    model: str,
    labels: np.ndarray,
    prob: np.ndarray,
    others: dict[str, tuple[np.ndarray, float]],
    seed: int,
    diameters_mm: np.ndarray | None,
    match_mm: float = SIZE_MATCH_MM,
) -> tuple[list[Scored], list[Comparison]]:
    """The rows of ``others`` (name: (probabilities, threshold)) on the same nodules as ``model``'s
    ``prob``, and ``model``'s AUC minus each, with the paired interval over the same resamples."""
    rows, comparisons = [], []
    for name, (p, t) in others.items():
        rows.append(score(name, labels, p, seed, t, diameters_mm, match_mm, role=BASELINE_ROLES.get(name, "model")))
        comparisons.append(Comparison(model, name, *paired_difference(labels, prob, p, "auc", N_BOOT, seed=seed)))
    return rows, comparisons


@dataclass
class Evaluation:
    path: Path
    n_test: int
    n_malignant: int
    rows: list[Scored]
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    size_match_mm: float = SIZE_MATCH_MM
    labels: np.ndarray | None = None  # the test labels, and each row's probabilities, for figures
    probs: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "test_nodules": self.n_test,
            "test_malignant": self.n_malignant,
            "bootstrap_resamples": N_BOOT,
            "size_match_mm": self.size_match_mm,
            "notes": self.notes,
            "results": [r.to_json() for r in self.rows],
            "comparisons": [c.to_json() for c in self.comparisons],
        }


def held_out_set(ensemble: Ensemble, data_overrides: list[str] | None = None) -> tuple[StudySets, list[str]]:
    """The split the ensemble's study used (its test fold held out), and notes about the data."""
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
        notes.append(PHANTOM_CAVEAT)
    return sets, notes


def evaluate(
    path: str | Path, data_overrides: list[str] | None = None, seed: int = 0, match_mm: float | None = None
) -> Evaluation:
    """Ensemble, baselines and members on the held-out test fold, with 95% bootstrap intervals;
    ``match_mm`` (default :data:`SIZE_MATCH_MM`) bounds the size-matched pairs."""
    match_mm = SIZE_MATCH_MM if match_mm is None else match_mm
    ensemble = load_ensemble(path)
    header = ensemble.header
    sets, notes = held_out_set(ensemble, data_overrides)
    test = sets.test
    prob, members = ensemble.predict(test.crops)
    params = [count_params(m.network) for m in ensemble.members]
    diam = diameters(test)
    t = ensemble.threshold
    rows = [score("ensemble", test.labels, prob, seed, t, diam, match_mm, params=sum(params), weight=1.0)]
    probs = {"ensemble": prob}
    cal, point = header.calibration, header.operating_point
    if point is None:
        notes.insert(
            0,
            f"this ensemble file predates calibration: uncalibrated probabilities at threshold {DEFAULT_THRESHOLD} "
            "(export it again to calibrate it and choose its threshold on validation)",
        )
    else:
        how = f"temperature {cal.temperature:.3f} fitted on {cal.fitted_on}" if cal else "no calibration"
        notes.insert(0, f"threshold {t:.3f} ({point.rule} on validation), {how}; the test fold fits nothing")
    if cal is not None:
        raw = members @ ensemble.weights.numpy().astype(np.float64)
        rows.append(score("ensemble, uncalibrated", test.labels, raw, seed, DEFAULT_THRESHOLD, diam, match_mm))
        probs["ensemble, uncalibrated"] = raw
    search_labels = np.concatenate([sets.train.labels, sets.val.labels])
    fitted, baseline_notes = fit_baselines(
        sets.train.meta + sets.val.meta, search_labels, test.meta, point and point.rule
    )
    baseline_rows, comparisons = against("ensemble", test.labels, prob, fitted, seed, diam, match_mm)
    rows += baseline_rows
    probs.update({name: p for name, (p, _) in fitted.items()})
    for i, entry in enumerate(header.members):
        weight = float(ensemble.weights[i])
        rows.append(
            score(
                f"trial {entry.model.trial}",
                test.labels,
                members[:, i],
                seed,
                diameters_mm=diam,
                match_mm=match_mm,
                params=params[i],
                weight=weight,
            )
        )
    n, n_malignant = len(test), int(test.labels.sum())
    notes += baseline_notes
    return Evaluation(Path(path), n, n_malignant, rows, comparisons, notes, match_mm, test.labels, probs)
