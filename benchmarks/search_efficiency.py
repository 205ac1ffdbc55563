"""Search efficiency on the tabular benchmark: hypervolume of the front found against compute spent.

Replays search methods on ``benchmarks/nasbench/naslung-phantom.json.gz`` (built by
``benchmarks/nasbench/build.py``: real ``nasopt.training.fit.fit`` runs, per-epoch validation accuracy):
random search, NSGA-II and TPE training every trial to the full budget, and NSGA-II and random
search with MO-ASHA early stopping (``nasopt.search.pruners.moasha.MOASHA(1, 9, 3)``: rungs after epochs 1 and
3 of 9). Each replay is a real in-memory multi-objective Optuna study (objectives val_accuracy,
maximised, and params, minimised, the study file's defaults) with the real sampler
(``nasopt.search.samplers.make_sampler``) and the real genome (``nasopt.search.space.suggest``); only training is a
table lookup.

    python benchmarks/search_efficiency.py                        # the default replay below
    python benchmarks/search_efficiency.py --seeds 3 --workers 1 --budget 180 --methods random nsga2+moasha

Lookup: a suggested genome is decoded (``nasopt.search.space.decode``, which repairs depth and sorts
widths) and mapped to the table row with the nearest feature vector (Euclidean; ties to the lower
row index). Features, each scaled to [0, 1] over the study space: blocks per stage; for each of
the ``blocks_per_stage[1]`` block slots of each stage, log2 of the block's width mapped so that
the narrowest width is 1/6 and the widest 1 (for 6 widths), an absent block 0 (one step below
the narrowest width); the stem and stage CBAM flags; the margin; log lr; log2 batch size. The
row's per-epoch val_accuracy and its n_params are the trial's results.

Simulation: W workers (default W = 1 and 8), compute charged in epochs (one epoch = one time
unit). A free worker asks a trial and trains it epoch by epoch. At a rung epoch the trial's
(val_accuracy, params) is ranked by ``MOASHA.decide`` against the rung results of every trial
that reached that rung earlier in simulated time (same-time results: the older trial counts as
earlier, as the storage serialises them in the real search); a stop is told PRUNED, epoch 9 is
told COMPLETE with the row's final values. The run ends when the budget (default 540 epochs,
60 full trainings, total over all workers) is spent; trials still training then count as
unfinished. NSGA-II's population is the study file's ``population_size`` unless ``--population``.
Seeds are 1000, 1001, ...: the table's genomes were drawn with RandomSampler(seed=0), and a
replay with that seed would redraw the table row by row. Every method gets the same seeds, and
NSGA-II's first generation is its internal RandomSampler with that seed, so NSGA-II and random
search share their first ``population_size`` COMPLETE trials (a paired comparison). NSGA-II
counts a generation in COMPLETE trials only, so under MO-ASHA (about 1 trial in 9 completes)
its first generation lasts ~9x longer: NSGA-II+MO-ASHA is close to random+MO-ASHA at this
budget.

Outputs: the hypervolume of the COMPLETE trials' (val_accuracy, params) points after every epoch
of compute (``hypervolume_2d`` against ``HV_REFERENCE``, both in nasopt.visualization.report:
accuracy 0, 1e8 parameters, parameters in log10), median and interquartile range over seeds (default 10
per method and W); the compute to reach 95% (and 100%) of the table's own best hypervolume (all
rows at the full budget); the median HV at 25%, 50% and 100% of the budget; two checks (NSGA-II+MO-ASHA
needs at most a third of plain NSGA-II's epochs to reach 95%; at equal compute it beats random
search in the median); the table's spread and the rank correlation of epoch-1/epoch-3 with
epoch-9 accuracy (what decides whether early stopping can work at all) and, per method, the
median HV difference to random search against the seed-to-seed IQR; a PNG of median HV against
compute with IQR bands, one panel per W (``--png``); optionally every seed's numbers (``--json``).

Phantom numbers: the table is trained on the LIDC phantom (real annotations, synthetic
intensities). Its numbers compare search methods on one fixed, cheap problem; they say nothing
clinical.

Runtime (printed as RUNTIME at the end): the default replay (5 methods x W 1, 8 x 10 seeds, one
process) took 93 s on 2 CPU cores with the table at 43 rows, while the table's 2-thread build ran
on the same cores (load ~12). Per run: random and NSGA-II ~0.15 s (60 asks), TPE ~0.7 s, the
MO-ASHA methods ~1.6 s (~240 asks, rung ranking included). The lookup is linear in the rows, so a
120-row table costs about the same.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_TABLE = HERE / "nasbench" / "naslung-phantom.json.gz"
DEFAULT_PNG = HERE.parent / "docs" / "search-efficiency.png"
DEFAULT_BUDGET = 60 * 9  # epochs: 60 full trainings of 9 epochs
OBJECTIVES = ("val_accuracy", "params")
DIRECTIONS = ("maximize", "minimize")
#: method -> (nasopt sampler name, MO-ASHA on?)
METHODS: dict[str, tuple[str, bool]] = {
    "random": ("random", False),
    "nsga2": ("nsga2", False),
    "tpe": ("tpe", False),
    "nsga2+moasha": ("nsga2", True),
    "random+moasha": ("random", True),
}
LABELS = {
    "random": "random",
    "nsga2": "NSGA-II",
    "tpe": "TPE",
    "nsga2+moasha": "NSGA-II + MO-ASHA",
    "random+moasha": "random + MO-ASHA",
}
STYLES: dict[str, dict[str, Any]] = {"nsga2+moasha": {"lw": 2.6}, "random+moasha": {"ls": "--"}}
ZOOM = 0.85  # the figure's y axis starts at this fraction of the table's best hypervolume
FRACTIONS = (0.25, 0.5, 1.0)  # compute points reported, as fractions of the budget
TARGET = 0.95  # fraction of the table's best hypervolume
# The table's genomes were drawn by RandomSampler(seed=meta["seed"]), 0 by default; a replay with that seed
# would redraw exactly the table's rows in order, so replay seeds start far from it.
SEED0 = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="tabular benchmark (.json.gz)")
    p.add_argument("--seeds", type=int, default=10, help="seeds per method and worker count")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 8], help="simulated asynchronous workers")
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="compute in epochs, summed over workers")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--population", type=int, default=None, help="NSGA-II population (default: the study file's)")
    p.add_argument("--png", type=Path, default=DEFAULT_PNG, help="figure: median HV vs compute")
    p.add_argument("--json", type=Path, default=None, help="also write every seed's numbers here")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.budget < 1 or min(args.workers) < 1:
        p.error("--seeds, --budget and --workers must be positive")
    return args


# ---------------------------------------------------------------- the table and its lookup


def features(params: dict[str, Any], space: Any) -> np.ndarray:
    """The lookup's feature vector of a genome (see the module docstring), every entry in [0, 1]."""
    from nasopt.search.space import decode

    arch = decode(params, space)
    lo, hi = space.blocks_per_stage
    log_w = np.log2(space.widths)
    w_lo, w_steps = log_w.min(), max(len(space.widths), 2)
    w_span = max(log_w.max() - w_lo, 1e-12)
    out: list[float] = []
    for stage in arch.stages:
        out.append((len(stage) - lo) / max(hi - lo, 1))
        for b in range(hi):
            # An absent block sits one width step below the narrowest, so depth and width trade off smoothly.
            out.append(((math.log2(stage[b]) - w_lo) / w_span * (w_steps - 1) + 1) / w_steps if b < len(stage) else 0.0)
    out.append(float(arch.cbam_stem))
    out.extend(float(c) for c in arch.cbam_stages)
    m_lo, m_hi = min(space.margins), max(space.margins)
    out.append((arch.margin - m_lo) / max(m_hi - m_lo, 1))
    lr_lo, lr_hi = (math.log(x) for x in space.lr)
    out.append((math.log(params["lr"]) - lr_lo) / max(lr_hi - lr_lo, 1e-12))
    b_lo, b_hi = (math.log2(x) for x in (min(space.batch_sizes), max(space.batch_sizes)))
    out.append((math.log2(params["batch_size"]) - b_lo) / max(b_hi - b_lo, 1e-12))
    return np.asarray(out)


@dataclass
class Table:
    """The benchmark's rows as arrays, with the nearest-row lookup."""

    meta: dict[str, Any]
    cfg: Any  # the StudyConfig the table was built with (study file + meta["set"])
    space: Any
    epochs: int
    accuracy: np.ndarray  # (rows, epochs) validation accuracy after each epoch
    n_params: np.ndarray  # (rows,)
    feats: np.ndarray  # (rows, features)

    @classmethod
    def load(cls, path: Path, population: int | None = None) -> Table:
        """Read the table; ``population`` overrides the study file's NSGA-II population_size."""
        from nasopt.config.schema import load_config
        from nasopt.model.architecture import Architecture
        from nasopt.search.space import decode

        with gzip.open(path, "rt") as f:
            raw = json.load(f)
        meta, rows = raw["meta"], raw["rows"]
        if not rows:
            sys.exit(f"{path}: the table has no rows yet")
        study = meta.get("study", "studies/naslung.toml")
        extra = [f"study.population_size={population}"] if population else []
        cfg = load_config(ROOT / study, [*meta.get("set", []), *extra])
        epochs = cfg.train.epochs
        rows = [r for r in rows if len(r["val_accuracy"]) == epochs]
        for r in rows[:3]:
            # The lookup decodes genomes with this config; a mismatch would map onto the wrong rows.
            if decode(r["params"], cfg.space) != Architecture.from_dict(r["arch"]):
                sys.exit(f"{path}: a row's genome does not decode to its arch under {study} {meta.get('set')}")
        return cls(
            meta=meta,
            cfg=cfg,
            space=cfg.space,
            epochs=epochs,
            accuracy=np.array([r["val_accuracy"] for r in rows], dtype=float),
            n_params=np.array([r["n_params"] for r in rows], dtype=float),
            feats=np.stack([features(r["params"], cfg.space) for r in rows]),
        )

    def __len__(self) -> int:
        return len(self.n_params)

    def nearest(self, params: dict[str, Any]) -> int:
        """Index of the row whose features are nearest to the genome's (ties: lowest index)."""
        d = ((self.feats - features(params, self.space)) ** 2).sum(axis=1)
        return int(np.argmin(d))

    def front(self) -> list[int]:
        """Rows on the Pareto front at the full budget (max accuracy, min params), fewest params first."""
        from nasopt.search.pruners.moasha import nondominated_ranks

        pts = np.column_stack([-self.accuracy[:, -1], self.n_params])
        return sorted(np.flatnonzero(nondominated_ranks(pts) == 0).tolist(), key=lambda i: self.n_params[i])

    def best_hv(self) -> float:
        from nasopt.visualization.report import HV_REFERENCE, hypervolume_2d

        return hypervolume_2d(list(zip(self.accuracy[:, -1], self.n_params, strict=True)), HV_REFERENCE)


# ---------------------------------------------------------------- one replay


@dataclass
class Run:
    """One seed of one method at one worker count."""

    hv: np.ndarray  # (budget + 1,) HV of the COMPLETE trials after each epoch of compute
    complete: int = 0
    pruned: int = 0
    unfinished: int = 0
    rows: set[int] = field(default_factory=set)  # distinct rows that asked trials were mapped to
    seconds: float = 0.0


def replay(table: Table, method: str, workers: int, budget: int, seed: int) -> Run:
    """Simulate one asynchronous search on the table; see the module docstring for the rules."""
    import heapq

    import optuna
    from optuna.trial import TrialState

    from nasopt.search.pruners.moasha import MOASHA, to_minimize
    from nasopt.search.samplers import make_sampler
    from nasopt.search.space import suggest
    from nasopt.visualization.report import HV_REFERENCE, hypervolume_2d

    t0 = time.perf_counter()
    sampler_name, early = METHODS[method]
    sampler = make_sampler(sampler_name, table.cfg, seed)
    study = optuna.create_study(directions=list(DIRECTIONS), sampler=sampler)
    moasha = MOASHA(1, table.epochs, 3) if early else None
    rung_results: dict[int, list[np.ndarray]] = {level: [] for level in (moasha.levels if moasha else [])}

    run = Run(hv=np.zeros(budget + 1))
    points: list[tuple[float, float]] = []
    # trial number -> (trial, row); the heap holds (time the next epoch ends, trial number, worker, epoch).
    active: dict[int, tuple[optuna.Trial, int]] = {}
    heap: list[tuple[int, int, int, int]] = []

    def start(worker: int, now: int) -> None:
        trial = study.ask()
        suggest(trial, table.space)
        row = table.nearest(trial.params)
        run.rows.add(row)
        active[trial.number] = (trial, row)
        heapq.heappush(heap, (now + 1, trial.number, worker, 1))

    for w in range(workers):
        start(w, 0)
    spent, hv = 0, 0.0
    while spent < budget:
        now, number, worker, epoch = heapq.heappop(heap)
        trial, row = active[number]
        spent += 1
        done = False
        if moasha is not None and moasha.is_rung(epoch):
            mine = to_minimize([table.accuracy[row, epoch - 1], table.n_params[row]], DIRECTIONS)
            decision = moasha.decide(mine, rung_results[epoch], epoch=epoch)
            rung_results[epoch].append(mine)
            if not decision.keep_going:
                study.tell(trial, state=TrialState.PRUNED)
                run.pruned += 1
                done = True
        if not done and epoch == table.epochs:
            values = (float(table.accuracy[row, -1]), float(table.n_params[row]))
            study.tell(trial, values)
            run.complete += 1
            points.append(values)
            hv = hypervolume_2d(points, HV_REFERENCE)
            done = True
        run.hv[spent] = hv
        if done:
            del active[number]
            if spent < budget:  # no asks for trials that could not train a single epoch
                start(worker, now)
        else:
            heapq.heappush(heap, (now + 1, number, worker, epoch + 1))
    run.unfinished = len(active)
    run.seconds = time.perf_counter() - t0
    return run


# ---------------------------------------------------------------- statistics


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile where ``inf`` (never reached) stays ``inf`` instead of NaN."""
    x = np.sort(np.asarray(values, dtype=float))
    pos = q * (len(x) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if math.isinf(x[hi]):
        return x[lo] if lo == hi or pos == lo else math.inf
    return float(x[lo] + (x[hi] - x[lo]) * (pos - lo))


def compute_to(run: Run, threshold: float) -> float:
    """Epochs of compute until the HV first reaches ``threshold`` (inf if never)."""
    hit = np.flatnonzero(run.hv >= threshold - 1e-12)
    return float(hit[0]) if len(hit) else math.inf


def fmt_q(values: Sequence[float], digits: int = 0) -> str:
    """``median (q25-q75)``."""

    def one(v: float) -> str:
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"

    return f"{one(quantile(values, 0.5))} ({one(quantile(values, 0.25))}-{one(quantile(values, 0.75))})"


def table_stats(table: Table) -> dict[str, Any]:
    """Spread of the table's accuracies and how well early epochs rank the final one."""
    from scipy.stats import kendalltau, spearmanr

    acc = table.accuracy
    final = acc[:, -1]
    stats: dict[str, Any] = {
        "rows": len(table),
        "final_accuracy": {
            "min": float(final.min()),
            "q25": float(np.quantile(final, 0.25)),
            "median": float(np.median(final)),
            "q75": float(np.quantile(final, 0.75)),
            "max": float(final.max()),
            "distinct": len(np.unique(final)),
        },
        "correlation_with_final": {},
    }
    for e in sorted({1, 3, table.epochs - 1} & set(range(1, table.epochs))):
        early = acc[:, e - 1]
        tau, p_tau = kendalltau(early, final)
        rho, p_rho = spearmanr(early, final)
        stats["correlation_with_final"][e] = {
            "kendall_tau": float(tau),
            "kendall_p": float(p_tau),
            "spearman": float(rho),
            "spearman_p": float(p_rho),
            "distinct": len(np.unique(early)),
            # The most common value: at epoch 1 most networks still predict one class.
            "mode_share": float(np.max(np.unique(early, return_counts=True)[1]) / len(early)),
        }
    tau, _ = kendalltau(np.log10(table.n_params), final)
    stats["kendall_tau_log_params_final"] = float(tau)
    return stats


# ---------------------------------------------------------------- outputs


def write_png(results: dict[tuple[str, int], list[Run]], best: float, budget: int, path: Path) -> None:
    """Median HV vs compute with IQR bands; one panel per W; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = sorted({w for _, w in results})
    methods = list(dict.fromkeys(m for m, _ in results))
    fig, axes = plt.subplots(1, len(workers), figsize=(6 * len(workers), 4.5), squeeze=False, sharey=True)
    x = np.arange(budget + 1)
    for ax, w in zip(axes[0], workers, strict=True):
        for m in methods:
            hv = np.stack([r.hv for r in results[m, w]])
            q25, q50, q75 = np.quantile(hv, [0.25, 0.5, 0.75], axis=0)
            # Same-seed methods share their first trials, so lines overlap: MO-ASHA variants get their own styles.
            style = STYLES.get(m, {})
            (line,) = ax.plot(x, q50, label=LABELS[m], **{"lw": 1.6, **style})
            ax.fill_between(x, q25, q75, color=line.get_color(), alpha=0.18, lw=0)
        ax.axhline(best, color="k", lw=0.8, ls=":", label="table's best front")
        ax.axhline(TARGET * best, color="k", lw=0.8, ls="--", label=f"{TARGET:.0%} of best")
        ax.set_title(f"W = {w} worker{'s' if w > 1 else ''}")
        ax.set_xlabel("compute (epochs, all workers)")
        ax.set_xlim(0, budget)
        # From 0 the first full training alone fills most of the axis; the methods differ near the top.
        ax.set_ylim(ZOOM * best, 1.01 * best)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"hypervolume (accuracy x log10 params), median, IQR\n(axis from {ZOOM:.0%} of the best)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Search efficiency on the NAS-Lung phantom table (phantom data: compares methods only)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def write_json(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = Table.load(args.table, args.population)
    best = table.best_hv()
    threshold = TARGET * best
    points = [max(1, round(f * args.budget)) for f in FRACTIONS]
    print(
        f"table {args.table.name}: {len(table)} rows, {table.epochs} epochs, data {table.meta.get('data')} "
        f"(phantom numbers: they compare search methods, nothing clinical)"
    )
    print(
        f"budget {args.budget} epochs (= {args.budget / table.epochs:.0f} full trainings), seeds {args.seeds}, "
        f"workers {args.workers}, MO-ASHA rungs {_levels(table.epochs)}, "
        f"NSGA-II population {table.cfg.study.population_size}"
    )
    print(f"best-front HV of all rows {best:.4f} (reference accuracy 0, 1e8 params, log10); target {threshold:.4f}")
    front = table.front()
    print(
        f"best front ({len(front)} rows): "
        + "; ".join(f"{table.n_params[i]:,.0f} params acc {table.accuracy[i, -1]:.3f}" for i in front)
    )

    results: dict[tuple[str, int], list[Run]] = {}
    for w in args.workers:
        for m in args.methods:
            results[m, w] = [replay(table, m, w, args.budget, SEED0 + k) for k in range(args.seeds)]

    # ---- the table
    head = f"{'method':<14} {'W':>2}  {'epochs to 95% HV: median (IQR)':<32} {'reached':>7}"
    head += f"  {'epochs to 100% HV':<20} {'reached':>7}"
    head += "".join(f"  {f'HV@{p} ({p / args.budget:.0%})':>24}" for p in points)
    print()
    print(head)
    print("-" * len(head))
    summary: dict[str, Any] = {}
    for (m, w), runs in results.items():
        c95 = [compute_to(r, threshold) for r in runs]
        hv_at = {p: [float(r.hv[p]) for r in runs] for p in points}
        c100 = [compute_to(r, best) for r in runs]
        reached = sum(math.isfinite(c) for c in c95)
        line = f"{m:<14} {w:>2}  {fmt_q(c95):<32} {f'{reached}/{len(runs)}':>7}"
        line += f"  {fmt_q(c100):<20} {f'{sum(math.isfinite(c) for c in c100)}/{len(runs)}':>7}"
        line += "".join(f"  {fmt_q(hv_at[p], 3):>24}" for p in points)
        print(line)
        summary[f"{m} W={w}"] = {
            "method": m,
            "workers": w,
            "compute_to_95": [c if math.isfinite(c) else None for c in c95],  # None: not reached
            "compute_to_100": [c if math.isfinite(c) else None for c in c100],
            "hv_at": {str(p): v for p, v in hv_at.items()},
            "complete": [r.complete for r in runs],
            "pruned": [r.pruned for r in runs],
            "unfinished": [r.unfinished for r in runs],
            "distinct_rows": [len(r.rows) for r in runs],
            "seconds": [round(r.seconds, 3) for r in runs],
        }

    print()
    print("trials per run (sums over seeds) and distinct rows looked up (median per seed; union over seeds)")
    for (m, w), runs in results.items():
        union = set().union(*(r.rows for r in runs))
        print(
            f"counts {m} W={w}: complete={sum(r.complete for r in runs)} pruned={sum(r.pruned for r in runs)} "
            f"unfinished={sum(r.unfinished for r in runs)} rows/seed={np.median([len(r.rows) for r in runs]):.0f} "
            f"rows_union={len(union)}/{len(table)} seconds/run={np.mean([r.seconds for r in runs]):.2f}"
        )

    # ---- the targets
    print()
    checks = targets(results, threshold, points, args.budget)
    for text in checks["lines"]:
        print(text)

    # ---- what the table can and cannot separate
    stats = table_stats(table)
    fa = stats["final_accuracy"]
    print()
    print(
        f"table spread: final accuracy min {fa['min']:.3f}, quartiles {fa['q25']:.3f}/{fa['median']:.3f}/"
        f"{fa['q75']:.3f}, max {fa['max']:.3f}, {fa['distinct']} distinct values over {stats['rows']} rows "
        f"(validation set of {table.meta.get('val', '?')} nodules: one nodule = "
        f"{1 / table.meta['val'] if table.meta.get('val') else float('nan'):.3f})"
    )
    for e, c in stats["correlation_with_final"].items():
        print(
            f"rank correlation epoch {e} vs epoch {table.epochs} accuracy: Kendall tau {c['kendall_tau']:+.3f} "
            f"(p {c['kendall_p']:.2g}), Spearman {c['spearman']:+.3f} (p {c['spearman_p']:.2g}); "
            f"{c['distinct']} distinct values, {c['mode_share']:.0%} of rows at the most common one"
        )
    print(f"rank correlation log10 params vs epoch {table.epochs} accuracy: Kendall tau "
          f"{stats['kendall_tau_log_params_final']:+.3f}")  # fmt: skip
    for text in separation(results, points):
        print(text)

    write_png(results, best, args.budget, args.png)
    print(f"\nfigure {args.png}")
    if args.json:
        write_json(
            {"meta": table.meta, "args": {k: str(v) for k, v in vars(args).items()}, "best_hv": best,
             "threshold": threshold, "runs": summary, "targets": checks["verdicts"], "table_stats": stats},
            args.json,
        )  # fmt: skip
        print(f"json {args.json}")
    print(f"RUNTIME {time.perf_counter() - t_start:.1f} s")
    return 0


def _levels(epochs: int) -> list[int]:
    from nasopt.search.pruners.moasha import MOASHA

    return MOASHA(1, epochs, 3).levels


def targets(results: dict[tuple[str, int], list[Run]], threshold: float, points: list[int], budget: int) -> dict:
    """(1) NSGA-II+MO-ASHA to 95% HV in <= 1/3 of NSGA-II's epochs; (2) it beats random at equal compute."""
    lines, verdicts = [], {}
    workers = sorted({w for _, w in results})
    for w in workers:
        ours = results.get(("nsga2+moasha", w))
        if ours is None:
            continue
        mine = quantile([compute_to(r, threshold) for r in ours], 0.5)
        plain = results.get(("nsga2", w))
        if plain is not None:
            theirs = quantile([compute_to(r, threshold) for r in plain], 0.5)
            if math.isfinite(theirs):
                met: bool | None = mine <= theirs / 3
                why = f"{mine:.0f} vs {theirs:.0f} / 3 = {theirs / 3:.0f} epochs"
            elif math.isfinite(mine) and mine <= budget / 3:
                met, why = True, f"{mine:.0f} epochs, NSGA-II did not reach it within {budget} (median)"
            else:
                met, why = (False if math.isinf(mine) else None), f"{mine} vs NSGA-II not reached within {budget}"
            verdict = {True: "MET", False: "NOT MET", None: "UNDECIDED"}[met]
            lines.append(f"target 1 W={w}: NSGA-II+MO-ASHA reaches 95% HV with <= 1/3 of NSGA-II's epochs: {verdict} "
                         f"(median {why})")  # fmt: skip
            verdicts[f"1 W={w}"] = met
        rand = results.get(("random", w))
        if rand is not None:
            parts, wins = [], []
            for p in points:
                a = float(np.median([r.hv[p] for r in ours]))
                b = float(np.median([r.hv[p] for r in rand]))
                wins.append(a > b)
                parts.append(f"{p} epochs {a:.3f} {'>' if a > b else '<=' if a < b else '='} {b:.3f}")
            verdict = "MET" if all(wins) else "NOT MET" if not any(wins) else "PARTLY MET"
            lines.append(f"target 2 W={w}: NSGA-II+MO-ASHA median HV > random's at equal compute: {verdict} "
                         f"({'; '.join(parts)})")  # fmt: skip
            verdicts[f"2 W={w}"] = dict(zip(map(str, points), wins, strict=True))
    if not lines:
        lines.append("targets: not checked (they need nsga2+moasha with nsga2 and/or random in --methods)")
    return {"lines": lines, "verdicts": verdicts}


def separation(results: dict[tuple[str, int], list[Run]], points: list[int]) -> list[str]:
    """Median HV difference to random search against the seed-to-seed spread (IQR), per compute point."""
    lines = []
    for (m, w), runs in results.items():
        base = results.get(("random", w))
        if m == "random" or base is None:
            continue
        parts, beyond = [], 0
        for p in points:
            a, b = np.array([r.hv[p] for r in runs]), np.array([r.hv[p] for r in base])
            spread = max(np.subtract(*np.quantile(a, [0.75, 0.25])), np.subtract(*np.quantile(b, [0.75, 0.25])))
            diff = np.median(a) - np.median(b)
            beyond += abs(diff) > spread
            parts.append(f"{p}: {diff:+.3f} (IQR {spread:.3f})")
        lines.append(
            f"separation {m} - random, W={w}, median HV difference at epochs "
            + ", ".join(parts)
            + f": beyond the larger IQR at {beyond}/{len(points)} points"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
