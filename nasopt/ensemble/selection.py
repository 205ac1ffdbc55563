"""Choosing ensemble members from a study's trials, on their stored validation predictions.

Pure functions over arrays, so the rules are tested without training:

* ``greedy``: Caruana et al. (2004) ensemble selection, forward selection with replacement as
  auto-sklearn and AutoGluon do it: add the trial that most improves the validation metric of
  the averaged probabilities, stop when none improves it or after ``rounds`` additions. The
  first pick is the best single trial, so the ensemble never scores below it. Weights are the
  selection counts.
* ``pareto``: the study's non-dominated trials, equal weights (the caller passes the front).
* ``topk``: the ``k`` best trials by the metric, equal weights.
Both take trials best first by the metric (:func:`ranked`, :func:`within_budget`).

Every rule keeps the total parameters of the distinct members within ``max_params``. The
metric is ``auc`` or ``accuracy``, or, as AutoGluon can, ``logloss`` or ``brier`` of the
probabilities after the same temperature scaling that export then fits (negated, so that
higher is better for every metric).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from nasopt.ensemble.calibration import apply_temperature, fit_temperature
from nasopt.evaluation.metrics import binary_metrics

#: AutoGluon's default number of greedy additions.
GREEDY_ROUNDS = 25
#: Validation metrics that select and rank members.
SELECTION_METRICS = ("auc", "accuracy", "logloss", "brier")
_LOSSES = {"logloss": log_loss, "brier": brier_score_loss}


@dataclass(frozen=True)
class Candidate:
    number: int  # trial number
    params: int
    prob: np.ndarray  # validation probabilities, in the study's validation order


def value(labels: np.ndarray, prob: np.ndarray, metric: str, calibrate: bool = True) -> float:
    """``metric`` of ``prob`` on ``labels`` (losses after temperature scaling unless ``calibrate``
    is off, as the exported ensemble will be); NaN where undefined."""
    if metric in _LOSSES:
        calibrated = apply_temperature(prob, fit_temperature(labels, prob) if calibrate else None)
        return float(_LOSSES[metric](labels, calibrated, labels=[0, 1]))
    if metric == "auc":  # the one metric greedy selection computes thousands of times: no other metric
        return float(roc_auc_score(labels, prob)) if len(np.unique(labels)) == 2 else float("nan")
    return binary_metrics(labels, prob)[metric]


def score(labels: np.ndarray, prob: np.ndarray, metric: str, calibrate: bool = True) -> float:
    """:func:`value`, higher is better (losses negated); -inf where it is undefined."""
    v = value(labels, prob, metric, calibrate)
    return -np.inf if np.isnan(v) else (-v if metric in _LOSSES else v)


def _fits(chosen: dict[int, int], cand: Candidate, params: dict[int, int], max_params: int | None) -> bool:
    if max_params is None or cand.number in chosen:
        return True
    return sum(params[n] for n in chosen) + cand.params <= max_params


def greedy(
    cands: list[Candidate],
    labels: np.ndarray,
    metric: str,
    max_params: int | None = None,
    rounds: int = GREEDY_ROUNDS,
    calibrate: bool = True,
) -> tuple[dict[int, int], float]:
    """({trial: count}, validation :func:`score`) of Caruana selection with replacement."""
    params = {c.number: c.params for c in cands}
    chosen: dict[int, int] = {}
    total = np.zeros(len(labels))
    best = -np.inf
    for size in range(1, rounds + 1):
        # Ties go to the smaller network, then the earlier trial: deterministic and cheap.
        trials = [
            (score(labels, (total + c.prob) / size, metric, calibrate), -c.params, -c.number, c)
            for c in cands
            if _fits(chosen, c, params, max_params)
        ]
        if not trials:
            break
        value, _, _, pick = max(trials, key=lambda t: t[:3])
        if value <= best:
            break
        best = value
        total += pick.prob
        chosen[pick.number] = chosen.get(pick.number, 0) + 1
    return chosen, best


def ranked(cands: list[Candidate], labels: np.ndarray, metric: str, calibrate: bool = True) -> list[Candidate]:
    """Best validation ``metric`` first; ties to the smaller network, then the earlier trial."""
    return sorted(cands, key=lambda c: (-score(labels, c.prob, metric, calibrate), c.params, c.number))


def within_budget(order: list[Candidate], max_params: int | None, k: int | None = None) -> dict[int, int]:
    """Up to ``k`` candidates in ``order``, skipping any that would take the total parameters
    over ``max_params``; weight 1 each."""
    chosen: dict[int, int] = {}
    params = {c.number: c.params for c in order}
    for c in order:
        if k is not None and len(chosen) == k:
            break
        if _fits(chosen, c, params, max_params):
            chosen[c.number] = 1
    return chosen


def weighted_prob(cands: list[Candidate], weights: dict[int, int]) -> np.ndarray:
    """The weighted mean validation probability of the chosen candidates, computed as the
    exported ensemble computes it (float64 probabilities times normalised float64 weights)."""
    by_number = {c.number: c for c in cands}
    w = np.array(list(weights.values()), dtype=np.float64)
    probs = np.stack([by_number[n].prob.astype(np.float64) for n in weights], axis=1)
    return probs @ (w / w.sum())
