"""Metrics, the stratified bootstrap, paired differences and size-matched AUC, against
scikit-learn, one-by-one loops and hand counts."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, recall_score, roc_auc_score

from nasopt.metrics import (
    METRICS,
    binary_metrics,
    bootstrap_intervals,
    paired_difference,
    size_matched_auc,
    stratified_indices,
)


def plain_ece(labels, prob, bins=10):
    """ECE written out: equal-width bins [i/10, (i+1)/10), the last closed at 1."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [i for i, p in enumerate(prob) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if inside:
            total += len(inside) / len(prob) * abs(np.mean(prob[inside]) - np.mean(labels[inside]))
    return total


def sklearn_metrics(labels, prob, threshold=0.5):
    pred = prob >= threshold
    return {
        "accuracy": accuracy_score(labels, pred),
        "sensitivity": recall_score(labels, pred),
        "specificity": recall_score(labels, pred, pos_label=0),
        "f1": f1_score(labels, pred, zero_division=0.0),
        "auc": roc_auc_score(labels, prob),
        "brier": brier_score_loss(labels, prob),
        "ece": plain_ece(labels, prob),
    }


def test_metrics_on_a_hand_counted_case():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    prob = np.array([0.9, 0.6, 0.2, 0.1, 0.7, 0.3, 0.4, 0.8])
    m = binary_metrics(labels, prob)
    # tp=3 (0.9,0.6,0.8), fn=1, tn=3, fp=1
    assert m["accuracy"] == 6 / 8
    assert m["sensitivity"] == 3 / 4 and m["specificity"] == 3 / 4
    assert m["f1"] == 0.75
    # AUC by counting ordered pairs
    pos, neg = prob[labels == 1], prob[labels == 0]
    assert np.isclose(m["auc"], np.mean([p > n for p in pos for n in neg]))


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_every_stratified_resample_equals_scikit_learn_one_by_one(threshold):
    """The vectorised metrics of each resample equal scikit-learn's (and a written-out ECE)
    computed one resample at a time on the same indices."""
    from nasopt.metrics import _resampled_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    prob = np.round(np.clip(labels * 0.3 + rng.random(60) * 0.7, 0, 1), 2)  # ties included
    idx = stratified_indices(labels, 200, seed=3)
    batch = _resampled_metrics(labels, prob, idx, threshold)
    assert set(batch) == set(METRICS)
    for row in range(len(idx)):
        expected = sklearn_metrics(labels[idx[row]], prob[idx[row]], threshold)
        for name, value in expected.items():
            assert np.isclose(batch[name][row], value, rtol=0, atol=1e-12), (name, row)


def test_binary_metrics_are_scikit_learns():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 300)
    prob = np.clip(labels * 0.3 + rng.random(300) * 0.7, 0, 1)
    for name, value in sklearn_metrics(labels, prob, 0.4).items():
        assert np.isclose(binary_metrics(labels, prob, 0.4)[name], value, rtol=0, atol=1e-12), name


def test_the_stratified_bootstrap_keeps_both_classes_and_never_gives_nan():
    labels = np.array([1, 1] + [0] * 28)  # unstratified, ~13% of resamples would lack a malignant nodule
    prob = np.linspace(0.05, 0.95, 30)
    idx = stratified_indices(labels, 500, seed=0)
    assert (labels[idx].sum(1) == 2).all() and idx.shape == (500, 30)
    # Each resample draws only within its class.
    assert set(idx[:, labels[idx[0]] == 1].ravel()) <= {0, 1}
    for seed in range(5):
        ci = bootstrap_intervals(labels, prob, n_boot=500, seed=seed)
        assert not any(np.isnan(v) for pair in ci.values() for v in pair), ci


@pytest.mark.parametrize("seed", range(5))
def test_every_interval_contains_its_estimate(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 90)
    prob = 1 / (1 + np.exp(-(2 * labels - 1) * 1.5 - rng.normal(0, 1.5, 90)))
    point = binary_metrics(labels, prob)
    for name, (lo, hi) in bootstrap_intervals(labels, prob, seed=seed).items():
        assert lo <= point[name] <= hi, (name, lo, point[name], hi)


def test_paired_difference_is_a_loop_over_the_same_resamples():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 50)
    a = np.clip(labels * 0.4 + rng.random(50) * 0.6, 0, 1)
    b = np.clip(labels * 0.2 + rng.random(50) * 0.8, 0, 1)
    point, lo, hi = paired_difference(labels, a, b, "auc", n_boot=300, seed=1)
    assert point == roc_auc_score(labels, a) - roc_auc_score(labels, b)
    idx = stratified_indices(labels, 300, seed=1)
    loop = [roc_auc_score(labels[i], a[i]) - roc_auc_score(labels[i], b[i]) for i in idx]
    assert np.isclose(lo, np.quantile(loop, 0.025)) and np.isclose(hi, np.quantile(loop, 0.975))
    assert paired_difference(labels, b, a, "auc", n_boot=300, seed=1) == pytest.approx((-point, -hi, -lo))


def test_size_matched_auc_is_a_count_over_close_pairs():
    labels = np.array([0, 0, 0, 1, 1, 1])
    diam = np.array([10.0, 12.0, 20.0, 11.0, 14.0, 30.0])
    prob = np.array([0.2, 0.6, 0.5, 0.6, 0.4, 0.9])
    right = total = 0.0
    for i in np.flatnonzero(labels == 0):
        for j in np.flatnonzero(labels == 1):
            if abs(diam[i] - diam[j]) <= 2.0:
                total += 1
                right += 1.0 if prob[j] > prob[i] else 0.5 if prob[j] == prob[i] else 0.0
    # Pairs: (10, 11) right, (12, 11) a tie, (12, 14) wrong at exactly 2 mm; nothing near 20 or 30.
    assert total == 3 and size_matched_auc(labels, prob, diam) == (right / total, 3) == (0.5, 3)
    assert size_matched_auc(labels, prob, diam, 0.5) == (pytest.approx(float("nan"), nan_ok=True), 0)


def test_auc_is_nan_with_one_class():
    assert np.isnan(binary_metrics(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]))["auc"])


def test_bootstrap_intervals_are_seeded_and_narrow_on_a_large_set():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    prob = np.clip(labels * 0.4 + rng.random(300) * 0.6, 0, 1)
    ci = bootstrap_intervals(labels, prob, n_boot=200, seed=0)
    assert all(hi - lo < 0.25 for lo, hi in ci.values())
    assert bootstrap_intervals(labels, prob, n_boot=200, seed=0) == ci


def test_every_bootstrap_resample_matches_scikit_learn():
    # The vectorised resampling must compute exactly binary_metrics' (scikit-learn's) metrics,
    # ties in the probabilities and one-class resamples included.
    from nasopt.metrics import _resampled_metrics

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 12)
    prob = np.round(rng.random(12), 1)  # many ties
    idx = rng.integers(0, 12, (300, 12))
    batch = _resampled_metrics(labels, prob, idx, 0.5)
    for row in range(len(idx)):
        expected = binary_metrics(labels[idx[row]], prob[idx[row]])
        for name, value in expected.items():
            got = batch[name][row]
            assert (np.isnan(value) and np.isnan(got)) or np.isclose(got, value), (name, row, got, value)
