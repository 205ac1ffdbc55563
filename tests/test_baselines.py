"""The size baseline and the ratings reference against scikit-learn fitted directly."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nasopt.baselines import RATING_KEYS, RATINGS_REFERENCE, SIZE_BASELINE, fit_predict, missing
from nasopt.errors import DataError


def nodules(n: int, seed: int) -> tuple[list[dict], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    meta = [
        {
            "nodule": f"p{i}/0",
            "diameter_mm": float(rng.uniform(4, 12) + 10 * y),
            **{k: float(rng.integers(1, 6)) for k in RATING_KEYS},
        }
        for i, y in enumerate(labels)
    ]
    return meta, labels


@pytest.mark.parametrize("kind, keys", [(SIZE_BASELINE, ()), (RATINGS_REFERENCE, RATING_KEYS)])
def test_each_baseline_is_scikit_learns_logistic_regression(kind, keys):
    train, y = nodules(80, 0)
    test, _ = nodules(30, 1)

    def x(meta):
        return np.array([[np.log(m["diameter_mm"]), *(m[k] for k in keys)] for m in meta])

    expected = make_pipeline(StandardScaler(), LogisticRegression()).fit(x(train), y).predict_proba(x(test))[:, 1]
    np.testing.assert_array_equal(fit_predict(kind, train, y, test), expected)


def test_a_source_without_ratings_or_diameters_says_so_in_one_line():
    full, _ = nodules(5, 0)
    assert missing(SIZE_BASELINE, full) is None and missing(RATINGS_REFERENCE, full) is None
    mnist = [{"patient": "train-0", "nodule": "train-0", "split": "train", "index": 0}]  # NoduleMNIST3D's record
    assert (
        missing(SIZE_BASELINE, mnist)
        == "no size baseline: the data records no nodule diameters (no 'diameter_mm' in its nodules' metadata)"
    )
    no_ratings = [{k: v for k, v in m.items() if k != "calcification"} for m in full]
    why = missing(RATINGS_REFERENCE, no_ratings)
    assert "no ratings reference" in why and "'calcification'" in why and "\n" not in why
    assert missing(SIZE_BASELINE, no_ratings) is None


def test_a_zero_diameter_is_an_error_naming_the_nodule():
    train, y = nodules(20, 0)
    train[3]["diameter_mm"] = 0.0
    with pytest.raises(DataError, match="nodule p3/0: diameter 0.0 mm"):
        fit_predict(SIZE_BASELINE, train, y, train)
