"""Tables for the terminal: a study's Pareto front, and models' metrics with their intervals."""

from __future__ import annotations

import optuna
from rich.console import Group
from rich.table import Table
from rich.text import Text

from nasopt.metrics import N_BOOT
from nasopt.trial_record import Key, val_key


def pareto_rows(study: optuna.Study) -> list[dict[str, object]]:
    """One row per Pareto-optimal trial, fewest parameters first."""
    rows = []
    for t in study.best_trials:
        rows.append(
            {
                "trial": t.number,
                "val_accuracy": t.user_attrs.get(val_key("accuracy")),
                "val_auc": t.user_attrs.get(val_key("auc")),
                "params": t.user_attrs.get(Key.PARAMS),
                "arch": t.user_attrs.get(Key.ARCH_SUMMARY, ""),
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


#: Columns of a metrics table, in the order of the paper's tables.
METRIC_COLUMNS = (("accuracy", "accuracy"), ("sensitivity", "sensitiv."), ("specificity", "specific."), ("f1", "F1"), ("auc", "AUC"))


def metrics_table(title: str, rows: list, n_boot: int = N_BOOT) -> Group:
    """One row per model (``Scored``-like: name, metrics, intervals, params, weight): each metric's
    value with its 95% interval below it, and its weight ``w`` in the ensemble; fits 80 columns."""
    table = Table(box=None, header_style="bold underline", pad_edge=False, caption=f"below each value: its 95% interval ({n_boot} bootstrap resamples)")
    for name in ("model", "w", "params", *(label for _, label in METRIC_COLUMNS)):
        table.add_column(name, justify="left" if name == "model" else "right", no_wrap=True)
    for r in rows:
        cells = [
            f"{_fmt(r.metrics[k], '.3f')}\n{_fmt(r.intervals[k][0], '.2f')}-{_fmt(r.intervals[k][1], '.2f')}"
            for k, _ in METRIC_COLUMNS
        ]
        table.add_row(r.name, _fmt(r.weight, ".2f"), _fmt(r.params, ","), *cells)
    return Group(Text(title), table)  # the title on a line of its own: a table title wraps to the table's width
