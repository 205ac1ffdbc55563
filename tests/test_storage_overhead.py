"""The storage-overhead benchmark runs end to end and prints its table (its figures are not tested)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_storage_overhead_prints_a_sqlite_row():
    args = ["--trials-in-study", "20", "--workers", "2", "--storages", "sqlite", "--timed", "3"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "storage_overhead.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("sqlite ")]
    assert rows, proc.stdout
    # storage | trials | workers | median ms | p90 ms | cpu ms | cold ms | timed
    storage, trials, workers, median, p90, _, _, timed = rows[-1][:8]
    assert (storage, trials, workers, timed) == ("sqlite", "20", "2", "6")
    assert 0 < float(median) <= float(p90)
    assert "target (median < 100 ms" in proc.stdout
