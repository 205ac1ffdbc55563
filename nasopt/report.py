"""Pareto front tables (and, later, figures) of a study."""

from __future__ import annotations

import optuna
from rich.table import Table


def pareto_rows(study: optuna.Study) -> list[dict[str, object]]:
    """One row per Pareto-optimal trial, fewest parameters first."""
    rows = []
    for t in study.best_trials:
        rows.append(
            {
                "trial": t.number,
                "val_accuracy": t.user_attrs.get("val_accuracy"),
                "val_auc": t.user_attrs.get("val_auc"),
                "params": t.user_attrs.get("params"),
                "arch": t.user_attrs.get("arch_summary", ""),
            }
        )
    return sorted(rows, key=lambda r: (r["params"] or 0, r["trial"]))


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def pareto_table(study: optuna.Study) -> Table:
    n_complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    table = Table(title=f"Pareto front of study {study.study_name!r} ({n_complete} complete trials)")
    for name, justify in (("trial", "right"), ("val acc", "right"), ("val AUC", "right"), ("params", "right"), ("architecture (stem | stages | margin; c = CBAM)", "left")):
        table.add_column(name, justify=justify)
    for r in pareto_rows(study):
        table.add_row(str(r["trial"]), _fmt(r["val_accuracy"], ".3f"), _fmt(r["val_auc"], ".3f"), _fmt(r["params"], ","), str(r["arch"]))
    return table
