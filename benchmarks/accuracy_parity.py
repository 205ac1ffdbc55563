"""Accuracy parity: do the trainer's fast default settings train as well as plain fp32 batch 8?

Trains one architecture on the search split of a study's data (the phantom by default) under
each setting below, for the same epochs and seeds, and prints the mean validation AUC over the
seeds with its difference from the reference. The target: within 0.01. Runs are separate
processes, --jobs at a time with the threads split between them (this measures accuracy, not
speed).

    python benchmarks/accuracy_parity.py                      # 0.03 M network, 3 seeds, 10 epochs
    python benchmarks/accuracy_parity.py --device cuda --jobs 4 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

# name: (precision, channels_last, batch size); the learning rate scales with sqrt(batch / 8).
SETTINGS = {
    "reference: fp32, contiguous, batch 8": ("fp32", False, 8),
    "defaults, batch 8": ("auto", "auto", 8),
    "defaults, batch 32 (lr x2)": ("auto", "auto", 32),
}
ARCH = ((4, 4), (4, 8, 8), (8, 8, 16))  # the 0.03 M network of docs/paper.md, CBAM everywhere, m = 4
#: The target: each setting's mean validation AUC within this of the reference's.
TOLERANCE = 0.01


def verdict(delta: float, tolerance: float = TOLERANCE) -> str:
    """What a parity line says of a setting whose mean AUC differs from the reference's by ``delta``."""
    return f"within {tolerance:g}" if abs(delta) <= tolerance else f"NOT within {tolerance:g}"


def overrides(args: argparse.Namespace) -> list[str]:
    return [f"split.n_folds={args.folds}", *args.set]


def run_one(setting: str, seed: int, args: argparse.Namespace) -> dict:
    import torch

    from nasopt.config.schema import load_config
    from nasopt.data.prepare import load_data
    from nasopt.data.splits import study_sets
    from nasopt.model import Architecture
    from nasopt.training.fit import fit

    torch.set_num_threads(args.threads)
    cfg = load_config(args.study, overrides(args))
    ns = load_data(cfg.data, progress=False)
    train, val, _ = study_sets(cfg, ns)
    precision, channels_last, batch = SETTINGS[setting]
    update = {"epochs": args.epochs, "precision": precision, "channels_last": channels_last}
    train_cfg = cfg.train.model_copy(update=update)
    r = fit(
        Architecture(ARCH, True, (True,) * 3, 4),
        train,
        val,
        train_cfg,
        lr=args.lr * (batch / 8) ** 0.5,
        batch_size=batch,
        seed=seed,
        device=args.device,
    )
    return {"auc": r.metrics["auc"], "bf16": r.extra["bf16"], "n_train": len(train), "n_val": len(val)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="studies/naslung.toml", help="its [data], [split] and [train] sections are used")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override the study file")
    ap.add_argument("--folds", type=int, default=5, help="outer folds (5: a validation fold of ~176 phantom nodules)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate at batch 8")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=None, help="runs at once (default: one per 1 thread)")
    ap.add_argument("--threads", type=int, default=None, help="threads in all (split between jobs)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one [setting, seed], print JSON
    args = ap.parse_args(argv)

    import torch

    if args.one:
        setting, seed = json.loads(args.one)
        print(json.dumps(run_one(setting, seed, args)))
        return

    from nasopt.config.schema import load_config
    from nasopt.data.prepare import load_data

    load_data(load_config(args.study, overrides(args)).data)  # prepare the phantom once, before the jobs start
    threads = args.threads or torch.get_num_threads()
    jobs = args.jobs or threads
    per_job = max(1, threads // jobs)

    def launch(run: tuple[str, int]) -> dict:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            json.dumps(run),
            "--study",
            args.study,
            "--folds",
            str(args.folds),
            "--epochs",
            str(args.epochs),
            "--lr",
            str(args.lr),
            "--device",
            args.device,
            "--threads",
            str(per_job),
            *(f"--set={o}" for o in args.set),
        ]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])

    runs = [(s, seed) for s in SETTINGS for seed in args.seeds]
    with ThreadPoolExecutor(jobs) as pool:
        results = dict(zip(runs, pool.map(launch, runs)))

    first = next(iter(results.values()))
    print(
        f"accuracy parity: {first['n_train']} train / {first['n_val']} validation nodules of {args.study}'s data "
        f"({args.folds} folds), the 0.03 M network, {args.epochs} epochs, seeds {args.seeds}, "
        f"lr {args.lr:g} at batch 8"
    )
    ref = None
    for s in SETTINGS:
        aucs = [results[s, seed]["auc"] for seed in args.seeds]
        mean = statistics.mean(aucs)
        ref = mean if ref is None else ref
        sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        bf16 = "bf16" if results[s, args.seeds[0]]["bf16"] else "fp32"
        delta = round(mean - ref, 3)  # the verdict judges the difference as printed
        said = "" if s.startswith("reference") else verdict(delta)
        print(
            f"  {s:<38} {bf16}  val AUC {mean:.3f} ± {sd:.3f}  ({' '.join(f'{a:.3f}' for a in aucs)})  "
            f"Δ {delta:+.3f} {said}"
        )


if __name__ == "__main__":
    main()
