import numpy as np
from sklearn.metrics import f1_score, recall_score, roc_auc_score

from nasopt.metrics import binary_metrics, bootstrap_intervals


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


def test_metrics_agree_with_scikit_learn_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    prob = np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1)
    m = binary_metrics(labels, prob)
    pred = prob >= 0.5
    assert np.isclose(m["sensitivity"], recall_score(labels, pred))
    assert np.isclose(m["specificity"], recall_score(labels, pred, pos_label=0))
    assert np.isclose(m["f1"], f1_score(labels, pred))
    assert np.isclose(m["auc"], roc_auc_score(labels, prob))


def test_auc_is_nan_with_one_class():
    assert np.isnan(binary_metrics(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]))["auc"])


def test_bootstrap_intervals_bracket_the_point_estimate():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    prob = np.clip(labels * 0.4 + rng.random(300) * 0.6, 0, 1)
    point = binary_metrics(labels, prob)
    ci = bootstrap_intervals(labels, prob, n_boot=200, seed=0)
    for name, (lo, hi) in ci.items():
        assert lo <= point[name] <= hi and hi - lo < 0.25
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
