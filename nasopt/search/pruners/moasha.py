"""MO-ASHA: the rung schedule and stopping rule for multi-objective early stopping.

Multi-objective asynchronous successive halving (MO-ASHA) is ASHA with the scalar ranking at each
rung replaced by a multi-objective one (Schmucker et al. 2021, "Multi-objective multi-fidelity
hyperparameter optimization with application to fairness"; Syne Tune's ``MOASHA`` scheduler). It is
the stopping type: every trial starts training, and at each rung epoch it is compared with every
trial that ever reached that rung; it goes on only if it ranks in the top ``1 / eta``.

Optuna cannot prune multi-objective studies (``Trial.report`` and ``should_prune`` refuse them), so
nasopt owns the rungs: the caller stores each trial's objective vector at each rung and asks
:meth:`MOASHA.decide`. Everything here is pure numpy over result vectors, no trials, no training.

Rules, all deterministic:

* Rungs are at ``min_epochs * eta**k`` epochs strictly below ``max_epochs``; reaching
  ``max_epochs`` completes the trial, it is not a rung (:func:`rung_levels`).
* Vectors are minimised; :func:`to_minimize` negates maximised objectives.
* Ranking at a rung (:func:`priority_order`): non-dominated sorting, front 0 first
  (:func:`nondominated_ranks`); within a front, the epsilon-net of Salinas et al. (2021, "A
  multi-objective perspective on jointly tuning hardware and hyperparameters") on objectives
  min-max normalised over the rung's results: the point with the lowest first objective, then
  repeatedly the point farthest (Euclidean) from its nearest already chosen point
  (:func:`epsilon_net_order`). Exact ties go to the earlier arrival: ``others`` in the order
  given, ``mine`` last.
* A result at 0-based position ``rank`` among ``n`` results continues iff ``rank / n <= 1 / eta``
  (Syne Tune's comparison), i.e. the best ``n // eta + 1`` of ``n`` go on. So the first result at
  a rung always continues, as in Syne Tune, and the second one continues only if it ranks ahead
  of the first (or ``eta == 2``).

Unlike Syne Tune the epsilon-net works on normalised objectives (raw units would let a parameter
count in millions swamp a loss), and the rank is the position in the sorted order (Syne Tune's
``NonDominatedPriority`` hands its sort order to a bracket that reads it as per-result priorities).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasopt.config.schema import StudyConfig

_SIGNS = {"minimize": 1.0, "maximize": -1.0}


def _integer(name: str, value: Any) -> int:
    # bool is an int subclass, but MOASHA(True, ...) is surely a mistake.
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def rung_levels(min_epochs: int, max_epochs: int, eta: int = 3) -> list[int]:
    """Rung epochs ``min_epochs * eta**k`` strictly below ``max_epochs`` (empty if they are equal)."""
    min_epochs = _integer("min_epochs", min_epochs)
    max_epochs = _integer("max_epochs", max_epochs)
    eta = _integer("reduction_factor", eta)
    if min_epochs < 1:
        raise ValueError(f"min_epochs must be >= 1, got {min_epochs}")
    if eta < 2:
        raise ValueError(f"reduction_factor must be >= 2, got {eta}")
    if min_epochs > max_epochs:
        raise ValueError(f"min_epochs ({min_epochs}) must be <= max_epochs ({max_epochs})")
    levels = []
    level = min_epochs
    # Integer arithmetic: Syne Tune's log-ratio count can lose a rung to rounding.
    while level < max_epochs:
        levels.append(level)
        level *= eta
    return levels


def _direction_sign(direction: Any) -> float:
    # optuna's StudyDirection is an enum named MINIMIZE / MAXIMIZE; strings keep this module Optuna-free.
    name = getattr(direction, "name", direction)
    if isinstance(name, str) and name.lower() in _SIGNS:
        return _SIGNS[name.lower()]
    raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")


def to_minimize(values: Sequence[float], directions: Sequence[Any]) -> np.ndarray:
    """The objective vector with maximised objectives negated, so that lower is better throughout.

    ``directions``: ``"minimize"``/``"maximize"`` (any case) or optuna ``StudyDirection`` members.
    """
    try:
        vector = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"values must be numbers, got {values!r}") from None
    if vector.ndim != 1:
        raise ValueError(f"values must be one vector, got shape {vector.shape}")
    if np.isnan(vector).any():  # float(None) is NaN here, and a NaN would only fail later, at a rung
        raise ValueError(f"values must be numbers, got {values!r}")
    if len(directions) != len(vector):
        raise ValueError(f"{len(vector)} values but {len(directions)} directions")
    return vector * np.array([_direction_sign(d) for d in directions])


def _points(points: Any, *, finite: bool) -> np.ndarray:
    try:
        array = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        raise ValueError("points must be an (n, objectives) array of numbers") from None
    if array.ndim != 2 or array.shape[1] < 1:
        raise ValueError(f"points must be an (n, objectives) array, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("points contain NaN; stop a diverged trial before ranking it")
    if finite and not np.isfinite(array).all():
        raise ValueError("points must be finite; stop a diverged trial before ranking it")
    return array


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Pareto front index per point (0 = non-dominated), minimising every column.

    ``a`` dominates ``b`` when ``a <= b`` everywhere and ``a < b`` somewhere, so duplicates share a
    front. Quadratic in the number of points, which is fine for the results at one rung.
    """
    pts = _points(points, finite=False)
    n = len(pts)
    # dominates[i, j]: point i dominates point j; built column by column to keep memory at n * n.
    weakly_better = np.ones((n, n), dtype=bool)
    strictly_better_somewhere = np.zeros((n, n), dtype=bool)
    for column in pts.T:
        weakly_better &= column[:, None] <= column[None, :]
        strictly_better_somewhere |= column[:, None] < column[None, :]
    dominates = weakly_better & strictly_better_somewhere
    n_dominators = dominates.sum(axis=0)
    ranks = np.full(n, -1, dtype=int)
    remaining = np.ones(n, dtype=bool)
    front = 0
    while remaining.any():
        # Dominance is a strict partial order, so some remaining point is always undominated.
        current = remaining & (n_dominators == 0)
        ranks[current] = front
        remaining &= ~current
        n_dominators -= dominates[current].sum(axis=0)
        front += 1
    return ranks


def epsilon_net_order(points: np.ndarray) -> np.ndarray:
    """Indices in greedy farthest-point order on the coordinates as given (Clarkson's epsilon-net).

    Starts at the lowest first coordinate; then takes the point whose Euclidean distance to its
    nearest chosen point is largest. Exact ties go to the lower index.
    """
    pts = _points(points, finite=True)
    n = len(pts)
    if n == 0:
        return np.empty(0, dtype=int)
    chosen = np.zeros(n, dtype=bool)
    order = [int(np.argmin(pts[:, 0]))]  # argmin/argmax return the first of equal values
    chosen[order[0]] = True
    nearest = np.linalg.norm(pts - pts[order[0]], axis=1)
    for _ in range(n - 1):
        pick = int(np.argmax(np.where(chosen, -np.inf, nearest)))
        order.append(pick)
        chosen[pick] = True
        nearest = np.minimum(nearest, np.linalg.norm(pts - pts[pick], axis=1))
    return np.array(order, dtype=int)


def _ranking(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pts = _points(points, finite=True)
    fronts = nondominated_ranks(pts)
    if len(pts) == 0:
        return np.empty(0, dtype=int), fronts
    low = pts.min(axis=0)
    span = pts.max(axis=0) - low
    # A constant objective separates nothing; dividing by 1 keeps it at 0 instead of NaN.
    scaled = (pts - low) / np.where(span > 0, span, 1.0)
    order = []
    for front in range(fronts.max() + 1):
        # flatnonzero keeps index order, so the net's lower-index tie-break is arrival order.
        members = np.flatnonzero(fronts == front)
        order.extend(members[epsilon_net_order(scaled[members])])
    return np.array(order, dtype=int), fronts


def priority_order(points: np.ndarray) -> np.ndarray:
    """Indices of ``points`` best first: by Pareto front, then by the epsilon-net on normalised objectives.

    Each objective is min-max normalised over all ``points`` (so rescaling an objective changes
    nothing); exact ties go to the lower index.
    """
    return _ranking(points)[0]


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


@dataclass(frozen=True)
class Decision:
    """Whether a trial goes on after a rung, and why."""

    keep_going: bool
    rank: int  # 0-based position of this result among the rung's results
    n: int  # results at the rung, including this one
    reason: str  # one sentence for the trial's note


class MOASHA:
    """Stopping-type MO-ASHA over minimisation vectors (see the module docstring for the rules).

    ``levels`` are the rung epochs; at one, call :meth:`decide` with the trial's vector and those of
    every other trial that reached the same rung, stopped ones included.
    """

    def __init__(self, min_epochs: int, max_epochs: int, reduction_factor: int = 3) -> None:
        self.levels: list[int] = rung_levels(min_epochs, max_epochs, reduction_factor)
        self.min_epochs = int(min_epochs)
        self.max_epochs = int(max_epochs)
        self.reduction_factor = int(reduction_factor)

    def __repr__(self) -> str:
        return (
            f"MOASHA(min_epochs={self.min_epochs}, max_epochs={self.max_epochs}, "
            f"reduction_factor={self.reduction_factor})"
        )

    def is_rung(self, epoch: int) -> bool:
        """Whether a trial that has finished ``epoch`` epochs is at a rung."""
        return epoch in self.levels

    def n_kept(self, n: int) -> int:
        """How many of ``n`` results at a rung go on: those with ``rank / n <= 1 / eta``."""
        return n // self.reduction_factor + 1 if n > 0 else 0

    def decide(self, mine: Sequence[float], others: Sequence[Sequence[float]], *, epoch: int | None = None) -> Decision:
        """mine: this trial's minimisation vector at the rung; others: every other trial's vector at the same rung.

        ``epoch``, if given, must be a rung and is named in the reason.
        """
        if epoch is not None and not self.is_rung(epoch):
            raise ValueError(f"epoch {epoch} is not a rung (rungs: {self.levels})")
        vector = np.asarray(mine, dtype=float)
        if vector.ndim != 1 or vector.size < 1:
            raise ValueError(f"mine must be one non-empty vector, got shape {vector.shape}")
        rest = _points(others, finite=True) if len(others) else np.empty((0, vector.size))
        if rest.shape[1] != vector.size:
            raise ValueError(f"mine has {vector.size} objectives but others have {rest.shape[1]}")
        # mine goes last, so exact ties rank it behind the results that were there before it.
        order, fronts = _ranking(np.vstack([rest, vector]))
        n = len(order)
        rank = int(np.flatnonzero(order == n - 1)[0])
        # rank * eta <= n is Syne Tune's rank / n <= 1 / eta without floating point.
        keep_going = rank * self.reduction_factor <= n
        at = f" at epoch {epoch}" if epoch is not None else ""
        if n == 1:
            reason = f"first result{at}, so it continues (nothing to compare with yet)"
        else:
            verdict = "continues" if keep_going else "stopped"
            reason = (
                f"ranked {_ordinal(rank + 1)} of {n} (Pareto front {fronts[-1]}){at}: "
                f"{verdict}, the top {self.n_kept(n)} go on"
            )
        return Decision(keep_going=keep_going, rank=rank, n=n, reason=reason)


def make_fidelity(cfg: StudyConfig) -> MOASHA | None:
    """The study file's early-stopping strategy, or ``None`` (every trial trains to the full budget)."""
    # A budget too short for a first rung (a smoke run's one epoch) trains every trial fully.
    if cfg.fidelity.strategy == "moasha" and cfg.fidelity.min_epochs < cfg.train.epochs:
        return MOASHA(cfg.fidelity.min_epochs, cfg.train.epochs, cfg.fidelity.reduction_factor)
    return None
