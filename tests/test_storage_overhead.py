"""The storage-overhead benchmark runs end to end and prints its table (its figures are not tested)."""

from tests.test_benchmarks import run


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
    assert "target (median < 100 ms" in out
