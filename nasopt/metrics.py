"""Classification metrics (scikit-learn) and bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc")
#: Bootstrap resamples behind every reported interval.
N_BOOT = 1000


def binary_metrics(labels: np.ndarray, prob_malignant: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, sensitivity (malignant recall), specificity (benign recall), F1 and AUC.

    AUC is NaN when only one class is present (it is undefined there).
    """
    labels = np.asarray(labels).astype(int)
    prob = np.asarray(prob_malignant, dtype=np.float64)
    pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "f1": float(f1_score(labels, pred, zero_division=0.0)),
        "auc": float(roc_auc_score(labels, prob)) if len(np.unique(labels)) == 2 else float("nan"),
    }


def _resampled_metrics(
    labels: np.ndarray, prob: np.ndarray, idx: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Every metric of every resample (rows of ``idx``) at once; the same definitions as
    :func:`binary_metrics` (scikit-learn's), vectorised because 1000 resamples of 5 metrics
    through scikit-learn take seconds per model."""
    y = labels[idx].astype(bool)
    p = prob[idx]
    pred = p >= threshold
    tp, fn = (pred & y).sum(1), (~pred & y).sum(1)
    tn, fp = (~pred & ~y).sum(1), (pred & ~y).sum(1)
    pos, neg = tp + fn, tn + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        # AUC as the Mann-Whitney statistic on mid-ranks (ties count a half), as roc_auc_score.
        ranks = rankdata(p, axis=1)
        auc = ((ranks * y).sum(1) - pos * (pos + 1) / 2) / (pos * neg)
        return {
            "accuracy": (tp + tn) / y.shape[1],
            "sensitivity": np.where(pos > 0, tp / pos, np.nan),
            "specificity": np.where(neg > 0, tn / neg, np.nan),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
            "auc": np.where((pos > 0) & (neg > 0), auc, np.nan),
        }


def bootstrap_intervals(
    labels: np.ndarray,
    prob_malignant: np.ndarray,
    n_boot: int = N_BOOT,
    alpha: float = 0.05,
    seed: int = 0,
    threshold: float = 0.5,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap (resampling nodules) (1 - alpha) intervals of every metric."""
    labels = np.asarray(labels).astype(int)
    prob = np.asarray(prob_malignant, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(labels), (n_boot, len(labels)))
    samples = _resampled_metrics(labels, prob, idx, threshold)
    return {
        name: (float(np.nanquantile(v, alpha / 2)), float(np.nanquantile(v, 1 - alpha / 2)))
        for name, v in samples.items()
    }
