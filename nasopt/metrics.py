"""Classification metrics (scikit-learn) and bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc")


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


def bootstrap_intervals(
    labels: np.ndarray, prob_malignant: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap (resampling nodules) (1 - alpha) intervals of every metric."""
    labels = np.asarray(labels)
    prob = np.asarray(prob_malignant)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {m: [] for m in METRICS}
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        for name, value in binary_metrics(labels[idx], prob[idx]).items():
            samples[name].append(value)
    return {
        name: (float(np.nanquantile(v, alpha / 2)), float(np.nanquantile(v, 1 - alpha / 2)))
        for name, v in samples.items()
    }
