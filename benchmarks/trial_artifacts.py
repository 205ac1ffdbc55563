"""What a trial's dashboard note and figures add to its time, on the demo study's settings.

Runs N trials of studies/demo.toml's space (NSGA-II, seeded) through the real objective into a
scratch SQLite study with an artifact store, and times each trial's training (fit) apart from
what follows it: the FLOPs count, the note, the learning-curve and attention PNGs, and the
artifact uploads. Prints each trial and the median share of the trial's time.

    python benchmarks/trial_artifacts.py                # 6 trials, demo settings, CPU
    python benchmarks/trial_artifacts.py --trials 10 --set train.epochs=4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="studies/demo.toml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import optuna
    import torch
    from optuna.artifacts import FileSystemArtifactStore

    from nasopt.config.schema import load_config
    from nasopt.data.prepare import load_data
    from nasopt.data.splits import study_sets
    from nasopt.search.objective import Objective
    from nasopt.search.samplers import make_sampler
    from nasopt.storages.study import create_or_load
    from nasopt.storages.url import open_storage

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(args.study, args.set)
    train, val, _ = study_sets(cfg, load_data(cfg.data, progress=False))
    rows: list[tuple[int, float, float, float]] = []

    class Timed(Objective):
        def _fit(self, trial, arch, hparams):  # noqa: ANN001, ANN202
            t0 = time.perf_counter()
            result = super()._fit(trial, arch, hparams)
            self.fit_s, self.fit_end = time.perf_counter() - t0, time.perf_counter()
            return result

        def _figures(self, *a):  # noqa: ANN002, ANN202
            t0 = time.perf_counter()
            out = super()._figures(*a)
            self.figures_s = time.perf_counter() - t0
            return out

        def __call__(self, trial):  # noqa: ANN001, ANN204
            values = super().__call__(trial)
            rows.append((trial.number, self.fit_s, time.perf_counter() - self.fit_end, self.figures_s))
            return values

    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/b.db")
        study = create_or_load("bench", cfg, storage, make_sampler("nsga2", cfg))
        store = FileSystemArtifactStore(str(Path(tmp)))
        study.optimize(Timed(cfg, train, val, torch.device("cpu"), artifacts=store), n_trials=args.trials)

    print(f"{len(train)} training, {len(val)} validation nodules; {cfg.train.epochs} epochs; {args.threads} threads")
    print(f"{'trial':>5} {'fit s':>8} {'after fit s':>12} {'of which figures s':>19} {'after fit / trial':>18}")
    for number, fit_s, after_s, fig_s in rows:
        print(f"{number:>5} {fit_s:8.2f} {after_s:12.2f} {fig_s:19.2f} {after_s / (fit_s + after_s):17.1%}")
    shares = [after / (fit + after) for _, fit, after, _ in rows[1:]]  # trial 0 pays one-off imports
    first = rows[0]
    print(
        f"median share after the first trial: {statistics.median(shares):.1%} "
        f"(first trial, with one-off imports: {first[2] / (first[1] + first[2]):.1%})"
    )


if __name__ == "__main__":
    main()
