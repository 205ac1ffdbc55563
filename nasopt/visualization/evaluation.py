"""``nasopt evaluate --figures``: the ROC and reliability figures of an evaluation."""

from __future__ import annotations

from pathlib import Path

from nasopt.evaluation.evaluate import Evaluation
from nasopt.evaluation.metrics import reliability_points
from nasopt.visualization.figures import reliability, roc


def write_figures(result: Evaluation, folder: str | Path) -> list[Path]:
    """``roc.png`` (the ensemble and the baselines, each threshold marked) and ``reliability.png``
    (the ensemble before and after calibration, and the baselines) in ``folder``."""
    folder = Path(folder)
    thresholds = {r.name: r.threshold for r in result.rows}
    shown = [name for name in result.probs if name != "ensemble, uncalibrated"]
    title = f"held-out test fold, {result.n_test} nodules"
    curves = [(name, result.probs[name], thresholds[name]) for name in shown]
    return [
        roc(result.labels, curves, folder / "roc.png", f"ROC, {title}"),
        reliability(
            [(n, *reliability_points(result.labels, p)) for n, p in result.probs.items()],
            folder / "reliability.png",
            f"reliability, {title}",
        ),
    ]
