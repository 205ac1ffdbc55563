"""The benchmark scripts run and print what docs/performance.md quotes (their figures are not tested)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(\d+\.\d+)"


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_throughput_table_has_baseline_trainer_and_concurrent_rows():
    out = run(
        "train_throughput.py",
        "--archs",
        "0",
        "--precision",
        "paper-style",
        "fp32",
        "--batch",
        "8",
        "--workers",
        "1",
        "2",
        "--seconds",
        "0.3",
        "--repeats",
        "1",
    )
    rows = [line.split() for line in out.splitlines() if line.startswith("0.03M")]
    # network (4 words) | precision | batch | workers | samples/s ...
    assert [(r[4], r[5], r[6]) for r in rows] == [("paper-style", "8", "1"), ("fp32", "8", "1"), ("fp32", "8", "2")]
    for r in rows:
        assert float(r[7]) > 0 and float(r[9]) > 0  # samples/s, GFLOP/s
    assert rows[0][11] == "1.00" and float(rows[1][11]) > 0  # ratio to the same-run baseline


def test_accuracy_parity_prints_every_setting_against_the_reference(tmp_path):
    out = run(
        "accuracy_parity.py",
        "--study",
        "studies/demo.toml",
        "--set",
        "data.max_scans=60",
        "--set",
        f'data.cache_dir="{tmp_path}"',
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--folds",
        "3",
    )
    lines = [line for line in out.splitlines() if "val AUC" in line]
    assert len(lines) == 3 and lines[0].lstrip().startswith("reference")
    aucs = [float(re.search(rf"val AUC {NUMBER}", line).group(1)) for line in lines]
    deltas = [float(re.search(r"Δ ([+-]\d+\.\d+)", line).group(1)) for line in lines]
    assert all(0 <= a <= 1 for a in aucs) and deltas[0] == 0.0
    assert all(abs(d - (a - aucs[0])) <= 0.0011 for d, a in zip(deltas[1:], aucs[1:]))
    for line, delta in zip(lines[1:], deltas[1:]):  # each verdict agrees with its printed difference
        assert line.rstrip().endswith("NOT within 0.01" if abs(delta) > 0.01 else " within 0.01"), line
    assert any(tmp_path.glob("phantom-*.safetensors"))


def _parity_module():
    spec = importlib.util.spec_from_file_location("accuracy_parity", ROOT / "benchmarks" / "accuracy_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "delta, said",
    [(0.004, "within 0.01"), (-0.004, "within 0.01"), (0.02, "NOT within 0.01"), (-0.02, "NOT within 0.01")],
)
def test_accuracy_parity_verdict_on_fixed_differences(delta, said):
    assert _parity_module().verdict(delta) == said


def test_latency_cost_prints_each_trials_share(cache_dir):
    out = run("latency_cost.py", "--trials", "2", "--threads", "2", "--set", "data.max_scans=60",
              "--set", "train.epochs=1", "--set", f'data.cache_dir="{cache_dir}"')  # fmt: skip
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+(complete|pruned)", line)]
    assert len(rows) == 2, out
    for r in rows:
        assert 0 < float(r[2]) < float(r[3])  # measuring s < trial s
    assert re.search(r"median share \d+\.\d+% \(max \d+\.\d+%\); target < 3%", out), out
