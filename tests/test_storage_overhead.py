"""The storage-overhead benchmark runs end to end and prints its table; its verdict follows its
figures (the figures themselves are not tested)."""

import importlib.util
import sys

import pytest

from tests.test_benchmarks import ROOT, run

GOAL = "target (median < 100 ms at 5000 trials, 16 workers, postgresql)"


def _module():
    spec = importlib.util.spec_from_file_location("storage_overhead", ROOT / "benchmarks" / "storage_overhead.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "rows, said",
    [
        ([("postgresql", 5000, 16, 78.0)], f"{GOAL}: met, 78.0 ms"),
        ([("postgresql", 5000, 16, 100.0)], f"{GOAL}: NOT met, 100.0 ms"),
        ([("postgresql", 5000, 1, 10.0), ("sqlite", 5000, 16, 10.0)], f"{GOAL}: not measured in this run"),
        ([("postgresql", 200, 16, 10.0)], f"{GOAL}: not measured in this run"),
    ],
)
def test_the_verdict_reads_only_the_target_row(rows, said):
    keys = ("storage", "trials", "workers", "median_ms")
    assert _module()._verdict([dict(zip(keys, r)) for r in rows]) == said


def test_storage_overhead_prints_a_sqlite_row():
    args = [
        "--trials-in-study",
        "20",
        "--workers",
        "2",
        "--storages",
        "sqlite",
        "--timed",
        "3",
        "--train-seconds",
        "0.2",
    ]
    out = run("storage_overhead.py", *args)
    assert "0.1-0.3 s of simulated training per trial (not in the figures)" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("sqlite ")]
    assert rows, out
    # storage | trials | workers | median ms | p90 ms | cpu ms | cold ms | timed
    storage, trials, workers, median, p90, _, _, timed = rows[-1][:8]
    assert (storage, trials, workers, timed) == ("sqlite", "20", "2", "6")
    assert 0 < float(median) <= float(p90)
    assert f"{GOAL}: not measured in this run" in out  # 20 trials on SQLite is not the target's setting
