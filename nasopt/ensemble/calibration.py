"""Calibration and operating points, fitted on validation predictions only.

A-Softmax logits are trained for angular margins, not probabilities, so export fits temperature
scaling (Guo et al. 2017) of the ensemble's validation probability with scikit-learn's
``CalibratedClassifierCV(method="temperature")`` over a ``FrozenEstimator``, and picks the
decision threshold on the calibrated validation probabilities. Both go into the ensemble's
header; nothing here ever sees the test fold.

The calibrated probability is ``sigmoid(logit(p) / T)``, with ``logit`` clipped at
:data:`PROB_EPS` so that a saturated float32 probability stays finite. :func:`apply_temperature`
(NumPy) and the ensemble's own forward (torch) compute exactly that.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_curve

from nasopt.errors import ConfigError

#: Probabilities are clipped to [PROB_EPS, 1 - PROB_EPS] before taking their logit.
PROB_EPS = 1e-6
CALIBRATIONS = ("temperature", "none")


def logit(prob: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(prob, dtype=np.float64), PROB_EPS, 1 - PROB_EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(prob: np.ndarray, temperature: float | None) -> np.ndarray:
    """``sigmoid(logit(prob) / temperature)``; temperature 1 or None returns ``prob`` unchanged."""
    prob = np.asarray(prob, dtype=np.float64)
    if temperature is None or temperature == 1.0:
        return prob
    return expit(logit(prob) / temperature)


class _GivenProbabilities(ClassifierMixin, BaseEstimator):
    """A 'classifier' whose one feature is already its probability of class 1. Its decision
    function is half the logit: scikit-learn turns a binary decision ``d`` into the two-class
    logits ``(-d, d)``, so temperature scaling then acts on ``logit(p) / T`` exactly."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> _GivenProbabilities:
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return logit(X[:, 0]) / 2

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (X[:, 0] >= 0.5).astype(int)


def _check_classes(labels: np.ndarray, flag: str, fix: str) -> np.ndarray:
    labels = np.asarray(labels).astype(int)
    missing = [name for c, name in ((0, "benign"), (1, "malignant")) if not (labels == c).any()]
    if missing:
        raise ConfigError(f"{flag}: the validation set has no {missing[0]} nodule to fit on; {fix}")
    return labels


#: scikit-learn searches log(1 / temperature) within +-10.
_LOG_BETA_BOUND = 10.0


def fit_temperature(labels: np.ndarray, prob: np.ndarray) -> float | None:
    """The temperature that minimises validation log loss of ``sigmoid(logit(prob) / T)``, or
    None when there is none worth shipping: when validation separates the classes perfectly (the
    loss falls towards 0 as T does, pushing every probability to 0 or 1), or when the optimum
    lies at the search's bound (validation shows no signal to scale: a 1-epoch demo ensemble ran
    to T = e^10 = 22,026, squeezing every probability to within 1e-7 of 0.5)."""
    labels = _check_classes(labels, "--calibration temperature", "use --calibration none, or a split with both")
    prob = np.asarray(prob, dtype=np.float64)
    if prob[labels == 1].min() > prob[labels == 0].max():
        return None
    given = _GivenProbabilities().fit(None, None)
    calibrated = CalibratedClassifierCV(FrozenEstimator(given), method="temperature")
    calibrated.fit(prob[:, None], labels)
    beta = float(calibrated.calibrated_classifiers_[0].calibrators[0].beta_)
    return None if abs(math.log(beta)) > _LOG_BETA_BOUND - 1e-3 else 1.0 / beta


def parse_operating_point(text: str) -> tuple[str, float | None]:
    """``youden`` -> ("youden", None); ``sensitivity=0.90`` -> ("sensitivity", 0.9)."""
    rule, sep, value = text.strip().lower().partition("=")
    example = "youden, sensitivity=0.90 or specificity=0.95"
    if rule == "youden" and not sep:
        return rule, None
    if rule not in ("sensitivity", "specificity") or not sep:
        raise ConfigError(f"--operating-point {text!r}: choose {example}")
    try:
        target = float(value)
    except ValueError:
        raise ConfigError(f"--operating-point {text!r}: {value!r} is not a number; e.g. {rule}=0.90") from None
    if not 0.0 < target <= 1.0:
        raise ConfigError(
            f"--operating-point {text!r}: no threshold reaches a {rule} of {value}; give a {rule} in (0, 1], "
            f"e.g. {rule}=0.90"
        )
    return rule, target


def choose_threshold(labels: np.ndarray, prob: np.ndarray, rule: str, target: float | None = None) -> float:
    """The threshold ``t`` (malignant when ``prob >= t``) that ``rule`` picks on these predictions,
    placed midway between the lowest score it calls malignant and the next lower score.

    * ``youden``: maximises sensitivity + specificity - 1; ties go to the highest threshold.
    * ``sensitivity``: the highest threshold whose sensitivity reaches ``target`` (so the best
      specificity that keeps it).
    * ``specificity``: the lowest threshold whose specificity reaches ``target``.
    """
    flag = f"--operating-point {rule}" + (f"={target:g}" if target is not None else "")
    labels = _check_classes(labels, flag, "choose a split whose validation fold holds both classes")
    # Every distinct score is a candidate; roc_curve's first threshold (inf) classifies nothing malignant.
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(prob, dtype=np.float64), drop_intermediate=False)
    if rule == "youden":
        i = int(np.argmax(tpr - fpr))  # thresholds decrease, so the first maximum is the highest threshold
    elif rule == "sensitivity":
        i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    elif rule == "specificity":
        i = int(np.flatnonzero(1 - fpr >= target - 1e-12)[-1])
    else:
        raise ConfigError(f"--operating-point {rule!r}: choose youden, sensitivity=0.90 or specificity=0.95")
    if i == 0:  # above every score: the next float above the largest, which JSON can carry
        return float(np.nextafter(np.max(prob), np.inf))
    # Midway down to the next lower score, not on the chosen one: the same decisions on these
    # predictions, and the same again when a run-time rounding moves a score by an ulp.
    lower = thresholds[i + 1] if i + 1 < len(thresholds) else 0.0
    return float((thresholds[i] + lower) / 2)
