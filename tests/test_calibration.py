"""Temperature scaling and operating points on hand-made validation predictions (no training)."""

import numpy as np
import pytest
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import log_loss

from nasopt.ensemble.calibration import (
    _GivenProbabilities,
    apply_temperature,
    choose_threshold,
    fit_temperature,
    parse_operating_point,
)
from nasopt.errors import ConfigError


def overconfident(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities whose logits are 4x too large: right in order, far too sure."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logits = 4 * ((2 * labels - 1) + rng.normal(0, 1.5, n))
    return labels, 1 / (1 + np.exp(-logits))


def sens_spec(labels, prob, t):
    pred = prob >= t
    return (pred & (labels == 1)).sum() / (labels == 1).sum(), (~pred & (labels == 0)).sum() / (labels == 0).sum()


@pytest.mark.parametrize("seed", range(3))
def test_temperature_scaling_lowers_the_log_loss_of_an_overconfident_model(seed):
    labels, prob = overconfident(seed)
    temperature = fit_temperature(labels, prob)
    assert temperature > 2  # it found the over-confidence
    assert log_loss(labels, apply_temperature(prob, temperature)) < log_loss(labels, prob) - 0.1
    # The temperature is the log-loss minimiser: a little either way is worse.
    best = log_loss(labels, apply_temperature(prob, temperature))
    for t in (temperature * 0.9, temperature * 1.1):
        assert log_loss(labels, apply_temperature(prob, t)) > best


def test_the_calibrated_probability_is_scikit_learns_and_the_ensembles():
    labels, prob = overconfident(0)
    given = FrozenEstimator(_GivenProbabilities().fit(None, None))
    sklearn_prob = CalibratedClassifierCV(given, method="temperature").fit(prob[:, None], labels)
    temperature = fit_temperature(labels, prob)
    ours = apply_temperature(prob, temperature)
    assert np.abs(ours - sklearn_prob.predict_proba(prob[:, None])[:, 1]).max() < 1e-12
    from nasopt.ensemble.module import Ensemble
    from nasopt.inference.core import Member
    from nasopt.model import Architecture, build_network

    ens = Ensemble([Member(build_network(Architecture(((4,), (4,), (4,)), False, (False,) * 3, 1)), (0, 1))], [1.0])
    ens.temperature = temperature
    prob32 = prob.astype(np.float32)  # what a network gives
    torch_prob = ens.calibrate(torch.from_numpy(prob32)).numpy()
    assert np.abs(torch_prob - apply_temperature(prob32, temperature)).max() < 1e-7
    assert np.array_equal(apply_temperature(prob, 1.0), prob) and np.array_equal(apply_temperature(prob, None), prob)


def test_youden_threshold_equals_a_brute_force_search():
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1])
    prob = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.4, 0.55, 0.6, 0.7, 0.8, 0.9])
    best_j, best_t = -1.0, None
    for t in sorted(set(prob), reverse=True):  # highest first: ties keep the highest threshold
        sens, spec = sens_spec(labels, prob, t)
        if sens + spec - 1 > best_j + 1e-12:
            best_j, best_t = sens + spec - 1, t
    assert best_t == 0.4  # 0.3 ties at J = 0.5: the higher wins
    t = choose_threshold(labels, prob, "youden")
    assert 0.35 < t <= 0.4 and t == (0.4 + 0.35) / 2  # midway down to the next lower score
    assert np.array_equal(prob >= t, prob >= best_t)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rule, target", [("sensitivity", 0.9), ("specificity", 0.95), ("sensitivity", 1.0)])
def test_a_target_is_met_on_validation_with_the_best_other_rate(seed, rule, target):
    labels, prob = overconfident(seed, 80)
    t = choose_threshold(labels, prob, rule, target)
    sens, spec = sens_spec(labels, prob, t)
    met, other = (sens, spec) if rule == "sensitivity" else (spec, sens)
    assert met >= target
    # No other threshold that meets the target does better on the other rate.
    for u in set(prob):
        s, p = sens_spec(labels, prob, u)
        m, o = (s, p) if rule == "sensitivity" else (p, s)
        if m >= target:
            assert o <= other + 1e-12


def test_unreachable_targets_and_missing_classes_are_one_line_errors():
    for text, fragment in [
        ("sensitivity=1.5", "no threshold reaches a sensitivity of 1.5"),
        ("specificity=0", "give a specificity in (0, 1]"),
        ("sensitivity=high", "'high' is not a number"),
        ("f1", "choose youden, sensitivity=0.90 or specificity=0.95"),
        ("youden=1", "choose youden"),
    ]:
        with pytest.raises(ConfigError, match=r"^--operating-point") as err:
            parse_operating_point(text)
        assert fragment in str(err.value) and "\n" not in str(err.value)
    assert parse_operating_point(" Sensitivity=0.90") == ("sensitivity", 0.9)
    only_benign = np.zeros(10, dtype=int)
    with pytest.raises(ConfigError, match="--operating-point youden: the validation set has no malignant nodule"):
        choose_threshold(only_benign, np.linspace(0, 1, 10), "youden")
    with pytest.raises(ConfigError, match="--calibration temperature: .* no malignant nodule.*--calibration none"):
        fit_temperature(only_benign, np.linspace(0, 1, 10))


def test_a_threshold_survives_the_rounding_of_the_shipped_ensemble():
    """Midway thresholds: scores moved by an ulp (float32 members, another summation order)
    still decide as on validation."""
    for seed in range(50):
        labels, prob = overconfident(seed, 88)
        for rule, target in (("youden", None), ("sensitivity", 1.0), ("specificity", 0.95)):
            t = choose_threshold(labels, prob, rule, target)
            nudged = np.concatenate([np.nextafter(prob, 0), np.nextafter(prob, 1)])
            assert np.array_equal(np.tile(prob >= t, 2), nudged >= t), (seed, rule)


def test_no_temperature_without_signal_or_with_perfect_separation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    assert fit_temperature(labels, 0.5 + 1e-4 * rng.standard_normal(80)) is None  # no signal: T would be e^10
    separated = np.where(labels == 1, 0.6, 0.4)
    assert fit_temperature(labels, separated) is None  # perfectly separated: T would fall towards 0
    assert fit_temperature(*overconfident(0)) is not None
