"""What measuring inference latency costs a search: its share of each demo trial's time.

Runs a real demo search (studies/demo.toml: the phantom subset, MO-ASHA) in a fresh SQLite study,
then prints, per trial that trained (complete or stopped early), the seconds spent measuring
latency at batch 1 and 32 (``latency_seconds``) against the trial's whole time (start to end, as
Optuna records it), and the median share. Target: under 3%.

    python benchmarks/latency_cost.py                 # 8 trials on this machine's CPU
    python benchmarks/latency_cost.py --trials 12 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the worker (default: torch's)")
    parser.add_argument("--config", default=str(ROOT / "studies" / "demo.toml"))
    parser.add_argument("--set", action="append", default=[], help="study-file override, as nasopt's --set")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/latency.db"
        cache = ROOT / "storage" / "cache"  # the demo's prepared phantom, when there is one
        cmd = [sys.executable, "-m", "nasopt", "search", "--study", "latency-cost", "--config", args.config,
               "--storage", url, "--artifacts", f"{tmp}/artifacts", "--n-trials", str(args.trials),
               "--device", args.device, "--no-front", "--set", f'data.cache_dir="{cache}"']  # fmt: skip
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        cmd += [a for o in args.set for a in ("--set", o)]
        subprocess.run(cmd, check=True, cwd=ROOT)
        study = optuna.load_study(study_name="latency-cost", storage=url)
        rows = []
        for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
            measuring = t.user_attrs.get("latency_seconds")
            if measuring is None:
                continue
            total = (t.datetime_complete - t.datetime_start).total_seconds()
            rows.append((t.number, t.state.name.lower(), measuring, total, measuring / total))
    device = study.trials[0].user_attrs.get("device_name", "?")
    print(f"latency measurement cost on {device} ({len(rows)} trials that trained):")
    print(f"{'trial':>5}  {'state':<8} {'measuring s':>11}  {'trial s':>8}  share")
    for number, state, measuring, total, share in rows:
        print(f"{number:>5}  {state:<8} {measuring:>11.2f}  {total:>8.1f}  {share:6.2%}")
    shares = [r[4] for r in rows]
    print(f"median share {statistics.median(shares):.2%} (max {max(shares):.2%}); target < 3%")


if __name__ == "__main__":
    main()
