"""Metrics, the stratified bootstrap, paired differences and size-matched AUC, against
scikit-learn, one-by-one loops and hand counts."""

import numpy as np
import pytest
from scipy.stats import bootstrap
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, recall_score, roc_auc_score

from nasopt.evaluation.metrics import (
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
    from nasopt.evaluation.metrics import _resampled_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    prob = np.round(np.clip(labels * 0.3 + rng.random(60) * 0.7, 0, 1), 2)  # ties included
    prob[:6] = [0.0, 1.0, 0.3, 0.7, 0.1, 1.0]  # the ends and bin edges of the ECE
    idx = stratified_indices(labels, 200, seed=3)
    batch = _resampled_metrics(labels, prob, idx, threshold)
    assert set(batch) == set(METRICS)
    for row in range(len(idx)):
        expected = sklearn_metrics(labels[idx[row]], prob[idx[row]], threshold)
        for name, value in expected.items():
            assert np.isclose(batch[name][row], value, rtol=0, atol=1e-12), (name, row)


def written_out_metrics(labels, prob, threshold):
    """Every metric counted by hand: no scikit-learn, the reference binary_metrics is held to."""
    pos, neg = prob[labels == 1], prob[labels == 0]
    tp, fn = int((pos >= threshold).sum()), int((pos < threshold).sum())
    tn, fp = int((neg < threshold).sum()), int((neg >= threshold).sum())
    return {
        "accuracy": (tp + tn) / len(labels),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "f1": 2 * tp / (2 * tp + fp + fn),
        "auc": np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]),
        "brier": float(np.mean((prob - labels) ** 2)),
        "ece": plain_ece(labels, prob),
    }


def test_binary_metrics_equal_the_counts_written_out():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 300)
    prob = np.round(np.clip(labels * 0.3 + rng.random(300) * 0.7, 0, 1), 2)  # ties included
    got = binary_metrics(labels, prob, 0.4)
    for name, value in written_out_metrics(labels, prob, 0.4).items():
        assert np.isclose(got[name], value, rtol=0, atol=1e-12), name


def test_the_stratified_bootstrap_keeps_both_classes_and_never_gives_nan():
    from nasopt.evaluation.metrics import _resampled_metrics

    labels = np.zeros(30, int)
    labels[[4, 17]] = 1  # unstratified, (28/30)**30 = 13% of resamples would lack a malignant nodule
    prob = np.linspace(0.05, 0.95, 30)
    unstratified = np.random.default_rng(0).integers(0, 30, (500, 30))
    assert np.isnan(_resampled_metrics(labels, prob, unstratified, 0.5)["auc"]).mean() > 0.05
    idx = stratified_indices(labels, 500, seed=0)
    assert idx.shape == (500, 30)
    # Every resample keeps the class counts, drawing each class only from its own nodules.
    assert (np.sort(labels[idx], axis=1) == np.sort(labels)).all()
    assert set(idx[labels[idx] == 1]) == {4, 17}
    assert set(idx[labels[idx] == 0]) == set(np.flatnonzero(labels == 0))
    for seed in range(5):
        ci = bootstrap_intervals(labels, prob, n_boot=500, seed=seed)
        assert not any(np.isnan(v) for pair in ci.values() for v in pair), ci
    assert bootstrap_intervals(labels, prob, n_boot=500, seed=0) != bootstrap_intervals(
        labels, prob, n_boot=500, seed=1
    )


def test_a_nan_resample_shows_in_the_interval():
    from nasopt.evaluation.metrics import _percentiles

    assert np.isnan(_percentiles(np.array([0.2, np.nan, 0.4, 0.6]), 0.05)).all()


@pytest.mark.parametrize("present, undefined", [(0, {"auc", "sensitivity"}), (1, {"auc", "specificity"})])
def test_a_one_class_set_gives_nan_where_a_metric_is_undefined(present, undefined):
    labels = np.full(12, present)
    prob = np.linspace(0.1, 0.9, 12)
    ci = bootstrap_intervals(labels, prob, n_boot=200)
    assert set(ci) == set(METRICS)
    assert {name for name, pair in ci.items() if np.isnan(pair).any()} == undefined
    assert all(np.isnan(ci[name]).all() for name in undefined)


def _resampled_by_scipy(labels, prob, n_boot, seed, threshold):
    """Percentile intervals from scipy.stats.bootstrap with the benign and the malignant nodules
    as two independent samples (each resampled within itself: a stratified bootstrap), every
    statistic written out here."""
    benign, malignant = prob[labels == 0], prob[labels == 1]
    n = len(prob)

    def auc(x, y, axis=-1):
        x, y = np.moveaxis(x, axis, -1)[..., :, None], np.moveaxis(y, axis, -1)[..., None, :]
        return ((y > x) + 0.5 * (y == x)).mean((-2, -1))

    statistics = {
        "accuracy": lambda x, y, axis=-1: ((x < threshold).sum(axis) + (y >= threshold).sum(axis)) / n,
        "sensitivity": lambda x, y, axis=-1: (y >= threshold).mean(axis),
        "specificity": lambda x, y, axis=-1: (x < threshold).mean(axis),
        "brier": lambda x, y, axis=-1: ((x**2).sum(axis) + ((1 - y) ** 2).sum(axis)) / n,
        "auc": auc,
    }
    return {
        name: bootstrap(
            (benign, malignant),
            f,
            n_resamples=n_boot,
            method="percentile",
            vectorized=True,
            paired=False,
            rng=np.random.default_rng(seed),
        ).confidence_interval
        for name, f in statistics.items()
    }


@pytest.mark.parametrize("seed", [0, 7])
def test_the_intervals_are_scipys_bootstrap_of_the_two_classes_as_independent_samples(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(70) < 0.3).astype(int)  # imbalanced, in random order
    prob = np.round(1 / (1 + np.exp(-(2 * labels - 1) - rng.normal(0, 1.2, 70))), 2)  # ties included
    ours = bootstrap_intervals(labels, prob, n_boot=400, seed=seed, threshold=0.4)
    for name, (lo, hi) in _resampled_by_scipy(labels, prob, 400, seed, 0.4).items():
        assert np.isclose(ours[name][0], lo, rtol=0, atol=1e-12), (name, ours[name], (lo, hi))
        assert np.isclose(ours[name][1], hi, rtol=0, atol=1e-12), (name, ours[name], (lo, hi))


def realistic(seed, n=90):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, 1 / (1 + np.exp(-(2 * labels - 1) * 1.5 - rng.normal(0, 1.5, n)))


@pytest.mark.parametrize("seed", range(20))
def test_every_interval_but_the_eces_contains_its_estimate(seed):
    labels, prob = realistic(seed)
    point = binary_metrics(labels, prob)
    ci = bootstrap_intervals(labels, prob, seed=seed)
    for name in set(METRICS) - {"ece"}:
        lo, hi = ci[name]
        assert lo <= point[name] <= hi, (name, lo, point[name], hi)


def test_the_ece_is_biased_upward_under_resampling_and_its_interval_is_left_so():
    """A resample repeats nodules, so its bins hold fewer distinct ones and their gaps grow: the
    resampled ECEs sit above the set's. The percentile interval reports that honestly, and on
    some sets lies wholly above the estimate (seed 6: 14 of 200 seeds at 90 nodules)."""
    from nasopt.evaluation.metrics import _resampled_metrics

    for seed in range(10):
        labels, prob = realistic(seed)
        resampled = _resampled_metrics(labels, prob, stratified_indices(labels, 1000, seed), 0.5)["ece"]
        assert resampled.mean() > binary_metrics(labels, prob)["ece"] + 0.005, seed
    labels, prob = realistic(6)
    lo, hi = bootstrap_intervals(labels, prob, seed=6)["ece"]
    assert binary_metrics(labels, prob)["ece"] < lo < hi


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


@pytest.mark.parametrize("metric", ["accuracy", "sensitivity", "brier", "ece"])
def test_paired_difference_of_a_metric_at_each_models_threshold(metric):
    rng = np.random.default_rng(8)
    labels = (rng.random(45) < 0.4).astype(int)
    a = np.round(np.clip(labels * 0.4 + rng.random(45) * 0.6, 0, 1), 2)
    b = np.round(np.clip(labels * 0.2 + rng.random(45) * 0.8, 0, 1), 2)
    point, lo, hi = paired_difference(labels, a, b, metric, n_boot=200, seed=2, threshold_a=0.35, threshold_b=0.6)
    assert np.isclose(point, sklearn_metrics(labels, a, 0.35)[metric] - sklearn_metrics(labels, b, 0.6)[metric])
    loop = [
        sklearn_metrics(labels[i], a[i], 0.35)[metric] - sklearn_metrics(labels[i], b[i], 0.6)[metric]
        for i in stratified_indices(labels, 200, seed=2)
    ]
    assert np.isclose(lo, np.quantile(loop, 0.025)) and np.isclose(hi, np.quantile(loop, 0.975))
    swapped = paired_difference(labels, b, a, metric, n_boot=200, seed=2, threshold_a=0.6, threshold_b=0.35)
    assert swapped == pytest.approx((-point, -hi, -lo))


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


def test_size_matched_auc_over_random_pairs_is_the_double_loop():
    rng = np.random.default_rng(3)
    labels = (rng.random(40) < 0.4).astype(int)
    diam = np.round(rng.uniform(4, 20, 40), 1)
    diam[:2] = [6.3, 8.3]  # 2 mm apart, but 2.000000000000001 in floats
    labels[:2] = [0, 1]
    prob = np.round(rng.random(40), 1)  # many ties
    right = total = 0.0
    for i in np.flatnonzero(labels == 0):
        for j in np.flatnonzero(labels == 1):
            if round(abs(diam[i] - diam[j]), 6) <= 2.0:
                total += 1
                right += 1.0 if prob[j] > prob[i] else 0.5 if prob[j] == prob[i] else 0.0
    auc, pairs = size_matched_auc(labels, prob, diam)
    assert pairs == total > 10 and auc == pytest.approx(right / total)
    assert size_matched_auc(np.zeros(5), prob[:5], diam[:5]) == (pytest.approx(float("nan"), nan_ok=True), 0)


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
    from nasopt.evaluation.metrics import _resampled_metrics

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


def test_reliability_points_are_the_ece_bins_written_out():
    from nasopt.evaluation.metrics import expected_calibration_error, reliability_points

    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, 80)
    prob = np.round(np.clip(labels * 0.3 + rng.random(80) * 0.7, 0, 1), 2)
    prob[:4] = [0.0, 1.0, 0.3, 0.7]
    mean_p, frac, count = reliability_points(labels, prob)
    expected = []
    for b in range(10):
        inside = [i for i, p in enumerate(prob) if b / 10 <= p < (b + 1) / 10 or (b == 9 and p == 1.0)]
        if inside:
            expected.append((np.mean(prob[inside]), np.mean(labels[inside]), len(inside)))
    np.testing.assert_allclose(np.column_stack([mean_p, frac, count]), expected, rtol=0, atol=1e-12)
    assert count.sum() == 80
    assert np.isclose(expected_calibration_error(labels, prob), (count / 80 * np.abs(mean_p - frac)).sum())
