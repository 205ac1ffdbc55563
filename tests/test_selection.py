"""Ensemble selection rules on hand-made validation predictions (no training)."""

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from nasopt.ensemble.calibration import apply_temperature, fit_temperature
from nasopt.ensemble.selection import Candidate, greedy, ranked, score, weighted_prob, within_budget


def candidates(seed: int, n_trials: int = 12, n_val: int = 60):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n_val)
    cands = []
    for number in range(n_trials):
        skill = rng.uniform(0.0, 0.6)
        prob = np.clip(skill * labels + (1 - skill) * rng.random(n_val), 0, 1).astype(np.float32)
        cands.append(Candidate(number, int(rng.integers(1_000, 100_000)), prob))
    return cands, labels


@pytest.mark.parametrize("metric", ["auc", "accuracy", "logloss", "brier"])
@pytest.mark.parametrize("seed", range(4))
def test_greedy_is_never_below_the_best_single_member(seed, metric):
    cands, labels = candidates(seed)
    weights, value = greedy(cands, labels, metric)
    best_single = max(score(labels, c.prob, metric) for c in cands)
    assert value >= best_single
    assert value == score(labels, weighted_prob(cands, weights), metric)
    assert all(isinstance(w, int) and w >= 1 for w in weights.values())


@pytest.mark.parametrize("metric, loss", [("logloss", log_loss), ("brier", brier_score_loss)])
def test_loss_metrics_score_the_temperature_scaled_probabilities(metric, loss):
    cands, labels = candidates(0)
    for c in cands[:3]:
        calibrated = apply_temperature(c.prob, fit_temperature(labels, c.prob))
        assert score(labels, c.prob, metric) == -loss(labels, calibrated)
        assert score(labels, c.prob, metric) >= -loss(labels, c.prob.astype(np.float64))


def test_greedy_first_pick_is_the_best_single_trial_and_it_stops_without_gain():
    labels = np.array([0, 0, 1, 1])
    perfect = Candidate(0, 10, np.array([0.1, 0.2, 0.8, 0.9]))
    worse = Candidate(1, 5, np.array([0.6, 0.2, 0.4, 0.9]))
    weights, value = greedy([worse, perfect], labels, "auc")
    assert weights == {0: 1} and value == 1.0  # nothing can improve AUC 1: one round only


def test_greedy_adds_a_second_member_when_the_average_is_better():
    labels = np.array([0, 1, 0, 1])
    a = Candidate(0, 10, np.array([0.4, 0.9, 0.6, 0.7]))  # wrong on nodule 2
    b = Candidate(1, 10, np.array([0.3, 0.45, 0.2, 0.8]))  # wrong on nodule 1
    weights, value = greedy([a, b], labels, "accuracy")
    assert score(labels, a.prob, "accuracy") == score(labels, b.prob, "accuracy") == 0.75
    assert value == 1.0 and weights == {0: 1, 1: 1}


@pytest.mark.parametrize("seed", range(4))
def test_every_rule_respects_the_parameter_budget(seed):
    cands, labels = candidates(seed)
    params = {c.number: c.params for c in cands}
    budget = sorted(params.values())[2] + sorted(params.values())[3]
    weights, _ = greedy(cands, labels, "auc", max_params=budget)
    assert weights and sum(params[n] for n in weights) <= budget
    for chosen in (
        within_budget(ranked(cands, labels, "auc"), budget),
        within_budget(ranked(cands, labels, "auc"), budget, k=2),
    ):
        assert chosen and sum(params[n] for n in chosen) <= budget
    assert greedy(cands, labels, "auc", max_params=min(params.values()) - 1) == ({}, -np.inf)


def test_topk_takes_the_k_best_by_the_metric():
    cands, labels = candidates(1)
    order = ranked(cands, labels, "auc")
    assert list(within_budget(order, None, k=3)) == [c.number for c in order[:3]]
    values = [score(labels, c.prob, "auc") for c in order]
    assert values == sorted(values, reverse=True)
