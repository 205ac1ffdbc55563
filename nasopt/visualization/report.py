"""What a study shows people: Pareto-front and metrics tables for the terminal, the markdown note
on each trial's dashboard page, and ``nasopt report``'s figures and pages."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import optuna
from optuna.trial import TrialState
from rich.console import Group
from rich.table import Table
from rich.text import Text

from nasopt.artifacts.record import Key, device_names, front, trained, val_key
from nasopt.atomic import atomic_write
from nasopt.data.sources import PHANTOM_CAVEAT, PHANTOM_TAG
from nasopt.errors import ConfigError, DataError
from nasopt.evaluation.metrics import N_BOOT


def pareto_rows(study: optuna.Study, device_name: str | None = None) -> list[dict[str, object]]:
    """One row per Pareto-optimal feasible trial (of ``device_name``'s, when given), fewest parameters first."""
    rows = []
    for t in front(study, device_name):
        rows.append(
            {
                "trial": t.number,
                "val_accuracy": t.user_attrs.get(val_key("accuracy")),
                "val_auc": t.user_attrs.get(val_key("auc")),
                "params": t.user_attrs.get(Key.PARAMS),
                "latency_ms": t.user_attrs.get(Key.LATENCY),
                "arch": t.user_attrs.get(Key.ARCH_SUMMARY, ""),
            }
        )
    return sorted(rows, key=lambda r: (r["params"] or 0, r["trial"]))


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def devices_note(study: optuna.Study, device_name: str | None) -> str | None:
    """What to say about the devices the trials ran on: latencies compare only within one device.
    An unknown ``device_name`` is an error naming the ones there are."""
    names = device_names(study)
    listed = "; ".join(f"{name!r}: {n} trials" for name, n in names.items())
    if device_name is not None:
        if device_name not in names:
            raise ConfigError(f"--device-name {device_name!r}: no trained trial ran on it; devices: {listed or 'none'}")
        return f"trials of {device_name!r} only"
    if len(names) > 1:
        return f"trials ran on {len(names)} devices ({listed}): latencies compare only within one; pass --device-name"
    return None


def pareto_table(study: optuna.Study, device_name: str | None = None) -> Table:
    n_complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    n_trained = len(trained(study))
    untrained = f", {n_complete - n_trained} over budget and not trained" if n_complete > n_trained else ""
    note = devices_note(study, device_name)
    table = Table(
        title=f"Pareto front of study {study.study_name!r} ({n_complete} complete trials{untrained})",
        caption=note,
    )
    rows = pareto_rows(study, device_name)
    latency = any(r["latency_ms"] is not None for r in rows)
    for name, justify in (
        ("trial", "right"),
        ("val acc", "right"),
        ("val AUC", "right"),
        ("params", "right"),
        *((("ms, batch 1", "right"),) if latency else ()),
        ("architecture (stem | stages | margin; c = CBAM)", "left"),
    ):
        table.add_column(name, justify=justify)
    for r in rows:
        table.add_row(
            str(r["trial"]),
            _fmt(r["val_accuracy"], ".3f"),
            _fmt(r["val_auc"], ".3f"),
            _fmt(r["params"], ","),
            *((_fmt(r["latency_ms"], ".2f"),) if latency else ()),
            str(r["arch"]),
        )
    return table


#: Columns of a metrics table: the paper's, then calibration (Brier score, ECE).
METRIC_COLUMNS = (
    ("accuracy", "accuracy"),
    ("sensitivity", "sensitiv."),
    ("specificity", "specific."),
    ("f1", "F1"),
    ("auc", "AUC"),
    ("brier", "Brier"),
    ("ece", "ECE"),
)


def metrics_table(title: str, rows: list, n_boot: int = N_BOOT, match_mm: float | None = None) -> Group:
    """One row per model (``Scored``-like: name, metrics, intervals, params, weight, threshold,
    size_matched): each metric's value with its 95% interval below it, the threshold ``thr`` its
    decisions used, its weight ``w`` in the ensemble, and where diameters are known its AUC over
    size-matched pairs with the number of pairs below."""
    matched = any(getattr(r, "size_matched", None) for r in rows)
    caption = f"below each value: its 95% interval ({n_boot} stratified bootstrap resamples)"
    if matched:
        caption += f"; size-matched AUC: benign-malignant pairs within {match_mm:g} mm in diameter, pairs below"
    table = Table(box=None, header_style="bold underline", pad_edge=False, caption=caption)
    names = ("model", "w", "params", "thr", *(label for _, label in METRIC_COLUMNS), *(["AUC sm."] if matched else []))
    for name in names:
        table.add_column(name, justify="left" if name == "model" else "right", no_wrap=True)
    for r in rows:
        cells = [
            f"{_fmt(r.metrics[k], '.3f')}\n{_fmt(r.intervals[k][0], '.2f')}-{_fmt(r.intervals[k][1], '.2f')}"
            for k, _ in METRIC_COLUMNS
        ]
        if matched:
            auc, pairs = r.size_matched or (None, None)
            cells.append(f"{_fmt(auc, '.3f')}\n{_fmt(pairs, ',')}")
        table.add_row(r.name, _fmt(r.weight, ".2f"), _fmt(r.params, ","), _fmt(r.threshold, ".3f"), *cells)
    return Group(Text(title), table)  # the title on a line of its own: a table title wraps to the table's width


#: NAS-Lung's published results (docs/paper.md): LIDC-IDRI, 10-fold test accuracy, parameters.
PAPER_RESULTS = (
    ("NAS-Lung ensemble", 16_840_000, 0.9077),
    ("NAS-Lung Model-1", 140_000, 0.8883),
    ("DeepLung", 141_570_000, 0.9044),
    ("AE-DPN", 678_690_000, 0.9024),
)
#: Hypervolume reference point: a metric of 0 and 10^8 parameters, on a log10 parameter axis.
HV_REFERENCE = (0.0, 1e8)


def hypervolume_2d(points: list[tuple[float, int]], reference: tuple[float, int] = HV_REFERENCE) -> float:
    """Area dominated by (metric to maximise, parameters to minimise) points up to ``reference``,
    with parameters in log10 (so a 10x smaller network counts the same at any size)."""
    ref_value, ref_log = reference[0], math.log10(reference[1])
    area, best = 0.0, ref_value
    for value, params in sorted(points, key=lambda p: (p[1], -p[0])):
        if value > best and params < reference[1]:
            area += (ref_log - math.log10(params)) * (value - best)
            best = value
    return area


def write_report(study_name: str, storage: str | None, out: str | Path, device_name: str | None = None) -> Path:
    """Write pareto.png, hypervolume.png, curves.png, index.html and summary.md for a study into ``out``:
    its trained, feasible trials (those of ``device_name``, when given)."""
    from nasopt.storages.study import load_study
    from nasopt.storages.url import open_storage
    from nasopt.visualization import figures  # matplotlib: only the report needs it

    study, cfg = load_study(study_name, open_storage(storage, heartbeat=None, create=False))
    note = devices_note(study, device_name)
    trials = [t for t in trained(study) if device_name in (None, t.user_attrs.get(Key.DEVICE_NAME))]
    trials.sort(key=lambda t: t.datetime_complete)
    if not trials:
        raise DataError(f"study {study_name!r} has no trained trial to report; run `nasopt search` first")
    out = Path(out)
    metric = next((o for o in cfg.study.objectives if o.startswith("val_")), "val_accuracy")
    on_front = {t.number for t in front(study, device_name)}
    phantom = cfg.data.source == "phantom"
    tag = PHANTOM_TAG if phantom else ""
    points = [(t.user_attrs[Key.PARAMS], t.user_attrs[metric], t.number) for t in trials]

    refs = PAPER_RESULTS if metric == "val_accuracy" else ()
    ref_note = (
        "Stars: NAS-Lung paper, test accuracy on LIDC-IDRI (10-fold); other data and protocol, not comparable"
        if refs
        else ""
    )
    figures.pareto(
        points,
        on_front,
        out / "pareto.png",
        metric,
        f"study {study_name!r}: {len(trials)} complete trials{tag}",
        refs,
        ref_note,
    )

    # Training time includes the trials stopped early (their compute was spent too); the front,
    # and so the hypervolume, counts full-budget trials only.
    stopped = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    hv, by_time, seconds, done = [], [], 0.0, 0
    for t in sorted([*trials, *stopped], key=lambda t: t.datetime_complete):
        seconds += t.user_attrs.get(Key.TRAIN_SECONDS, 0.0)
        if t.state == TrialState.COMPLETE:
            done += 1
            hv.append(hypervolume_2d([(p[1], p[0]) for p in points[:done]]))
        if hv:
            by_time.append((seconds, hv[-1]))
    hv_note = f"hypervolume of ({metric}, log10 parameters) against the reference point ({metric} 0, 10^8 parameters)"
    figures.hypervolume(hv, by_time, out / "hypervolume.png", f"study {study_name!r}: front hypervolume{tag}", hv_note)

    front_trials = sorted((t for t in trials if t.number in on_front), key=lambda t: t.user_attrs[Key.PARAMS])
    runs = [(f"trial {t.number}", t.user_attrs.get(Key.CURVE, [])) for t in front_trials]
    figures.curves(runs, out / "curves.png", f"study {study_name!r}: learning curves of the front{tag}")

    rows = pareto_rows(study, device_name)
    settings = json.dumps(cfg.model_dump(mode="json"), indent=2)
    caveat = " ".join(s for s in (f"{PHANTOM_CAVEAT}." if phantom else "", f"{note}." if note else "") if s)
    _write_text(out / "summary.md", _summary_md(study_name, len(trials), rows, hv[-1], settings, caveat))
    _write_text(out / "index.html", _index_html(study_name, len(trials), rows, hv[-1], settings, caveat))
    return out


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


_FRONT_COLUMNS = ("trial", "val accuracy", "val AUC", "parameters", "architecture")


def _front_cells(r: dict) -> list[str]:
    return [
        str(r["trial"]),
        _fmt(r["val_accuracy"], ".3f"),
        _fmt(r["val_auc"], ".3f"),
        _fmt(r["params"], ","),
        str(r["arch"]),
    ]


def _summary_md(name: str, n: int, rows: list[dict], hv: float, settings: str, caveat: str) -> str:
    lines = [f"# Study {name}", "", f"{n} complete trials; front hypervolume {hv:.3f}. {caveat}".rstrip(), ""]
    lines += [
        "![Pareto front](pareto.png)",
        "",
        "![Hypervolume](hypervolume.png)",
        "",
        "![Learning curves](curves.png)",
        "",
    ]
    lines += ["## Pareto front", "", "| " + " | ".join(_FRONT_COLUMNS) + " |", "|" + "---|" * len(_FRONT_COLUMNS)]
    lines += ["| " + " | ".join(_front_cells(r)) + " |" for r in rows]
    lines += ["", "## Study settings", "", "```json", settings, "```", ""]
    return "\n".join(lines)


def _index_html(name: str, n: int, rows: list[dict], hv: float, settings: str, caveat: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in _FRONT_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in _front_cells(r)) + "</tr>\n" for r in rows)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nasopt study {e(name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} td,th{{padding:2px 10px;text-align:right}}
td:last-child{{text-align:left;font-family:monospace}} img{{max-width:100%}}</style></head><body>
<h1>Study {e(name)}</h1>
<p>{n} complete trials; front hypervolume {hv:.3f}. <strong>{e(caveat)}</strong></p>
<img src="pareto.png" alt="Pareto front">
<img src="hypervolume.png" alt="Hypervolume"><img src="curves.png" alt="Learning curves">
<h2>Pareto front</h2>
<table id="front"><tr>{head}</tr>
{body}</table>
<h2>Study settings</h2><pre>{e(settings)}</pre>
</body></html>
"""
