"""Build the tabular benchmark: N architectures from a study's space, each trained to the full budget.

Every row is one real ``nasopt.training.fit.fit`` run on the search split (train folds -> validation
fold) of the study's data, recording per-epoch validation accuracy and AUC, parameters, FLOPs
and seconds. The genome (the trial's params) is kept, so a replay can map its samplers'
suggestions onto rows. Rows are appended as they finish: an interrupted build resumes.

    python benchmarks/nasbench/build.py                       # the committed table's settings
    python benchmarks/nasbench/build.py --n 8 --epochs 3 --out /tmp/t.json.gz   # a smoke build

The committed table is ``naslung-phantom.json.gz``; its ``meta`` holds this command's arguments.
Phantom data: its numbers compare search methods, they say nothing clinical.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "naslung-phantom.json.gz"
# Small enough to build in <= 90 min on 2 CPU cores, with rungs at 1, 3 and 9 epochs (eta = 3).
DEFAULT_SET = ["data.max_scans=250", "split.n_folds=5", "train.epochs=9"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="studies/naslung.toml", help="study file whose space is sampled")
    p.add_argument("--set", nargs="*", default=DEFAULT_SET, help="config overrides, section.key=value")
    p.add_argument("--n", type=int, default=120, help="architectures to train")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (architecture i is trained with seed i)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--part", type=int, nargs=2, metavar=("START", "END"), help="build only rows START..END-1 (into --out)"
    )
    p.add_argument("--merge", type=Path, nargs="+", help="append the rows of these --part tables to --out, in order")
    return p.parse_args(argv)


def load(path: Path) -> dict:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def save(table: dict, path: Path) -> None:
    """Atomic: a reader never sees half a table."""
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", compresslevel=9) as f:
        json.dump(table, f, separators=(",", ":"))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import optuna
    import torch

    from nasopt.config.schema import load_config
    from nasopt.data.prepare import load_data
    from nasopt.data.splits import study_sets
    from nasopt.model import count_flops
    from nasopt.search.space import suggest
    from nasopt.training.fit import fit

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(args.study, args.set)
    ns = load_data(cfg.data, progress=False)
    train, val, _ = study_sets(cfg, ns)
    meta = {
        "command": "python benchmarks/nasbench/build.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "study": args.study,
        "set": args.set,
        "seed": args.seed,
        "n": args.n,
        "epochs": cfg.train.epochs,
        "train": len(train),
        "val": len(val),
        "data": ns.source,
        "fingerprint": ns.fingerprint(),
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
    }
    if args.merge:  # parts built side by side (rows depend only on their index) join the table
        table = load(args.out)
        for part in sorted((load(p) for p in args.merge), key=lambda t: t["meta"]["part"][0]):
            start = part["meta"]["part"][0]  # a part stopped early holds fewer rows: the next part starts there
            if start != len(table["rows"]):
                sys.exit(f"the part from row {start} does not continue the table's {len(table['rows'])} rows")
            table["rows"] += part["rows"]
            table["meta"].setdefault("parts", []).append({k: part["meta"][k] for k in ("part", "command", "machine")})
        save(table, args.out)
        print(f"{args.out}: {len(table['rows'])} rows")
        return
    if args.part:
        meta["part"] = args.part
    table = load(args.out) if args.out.exists() else {"meta": meta, "rows": []}
    if table["meta"]["fingerprint"] != meta["fingerprint"] or table["meta"]["set"] != args.set:
        sys.exit(f"{args.out}: built from other data or settings; delete it or pass another --out")
    first = args.part[0] if args.part else 0
    # Rows depend only on their index: a resumed build (or a shorter --n) keeps a consistent table.
    table["meta"].update(n=args.n, command=meta["command"])
    table["rows"] = table["rows"][: args.n - first if args.part else args.n]
    save(table, args.out)
    # One in-memory study draws every genome up front, so row i is the same whatever resumes.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed), directions=["maximize"] * 2)
    trials = []
    for _ in range(args.n):
        trial = study.ask()
        trials.append((trial, *suggest(trial, cfg.space)))
    for i, (trial, arch, hparams) in enumerate(trials):
        if i < first + len(table["rows"]) or (args.part and i >= args.part[1]):
            continue
        t0 = time.perf_counter()
        r = fit(arch, train, val, cfg.train, lr=hparams["lr"], batch_size=hparams["batch_size"], seed=i)
        table["rows"].append(
            {
                "params": trial.params,
                "arch": arch.to_dict(),
                "n_params": r.params,
                "flops": count_flops(arch, cfg.train.input_size),
                "seconds": round(time.perf_counter() - t0, 2),
                "val_accuracy": [round(c["val_accuracy"], 4) for c in r.curve],
                "val_auc": [round(c["val_auc"], 4) for c in r.curve],
            }
        )
        save(table, args.out)
        row = table["rows"][-1]
        print(
            f"{i + 1:>4}/{args.n}  {row['n_params']:>9,} params  {row['seconds']:6.1f} s  "
            f"acc {row['val_accuracy'][-1]:.3f}  auc {row['val_auc'][-1]:.3f}  {arch.summary()}",
            flush=True,
        )


if __name__ == "__main__":
    main()
