"""benchmarks/search_efficiency.py replays search methods on a small cut of the committed table."""

from __future__ import annotations

import gzip
import json
import re
import statistics
from pathlib import Path

import pytest

from tests.test_benchmarks import run

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "nasbench" / "naslung-phantom.json.gz"


@pytest.fixture
def small_table(tmp_path: Path) -> Path:
    """The committed table's first 12 rows (real genomes and curves), so the replay runs in seconds."""
    if not TABLE.exists():
        pytest.skip(f"{TABLE.relative_to(ROOT)} is not built")
    with gzip.open(TABLE, "rt") as f:
        table = json.load(f)
    if len(table["rows"]) < 12:
        pytest.skip("the table has fewer than 12 rows yet")
    table["rows"] = table["rows"][:12]
    path = tmp_path / "small.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(table, f)
    return path


def test_replay_prints_a_row_per_method_and_workers_and_moasha_prunes(small_table: Path, tmp_path: Path):
    png, out_json = tmp_path / "x.png", tmp_path / "x.json"
    args = ["--table", str(small_table), "--seeds", "2", "--workers", "1", "2", "--budget", "60"]
    args += ["--methods", "random", "nsga2+moasha", "--png", str(png), "--json", str(out_json)]
    out = run("search_efficiency.py", *args)
    assert "12 rows" in out

    rows = re.findall(r"^(random|nsga2\+moasha)\s+(\d+)\s+\S+ \(\S+\)\s+(\d+)/2\s", out, re.MULTILINE)
    assert sorted((m, w) for m, w, _ in rows) == [
        ("nsga2+moasha", "1"),
        ("nsga2+moasha", "2"),
        ("random", "1"),
        ("random", "2"),
    ]

    counts = {
        (m, int(w)): (int(c), int(p))
        for m, w, c, p in re.findall(r"^counts (\S+) W=(\d+): complete=(\d+) pruned=(\d+)", out, re.MULTILINE)
    }
    assert set(counts) == {("random", 1), ("random", 2), ("nsga2+moasha", 1), ("nsga2+moasha", 2)}
    for w in (1, 2):
        assert counts["random", w][0] > 0 and counts["random", w][1] == 0  # no early stopping: nothing pruned
        assert counts["nsga2+moasha", w][1] > 0  # MO-ASHA stopped some trials at a rung
        assert counts["nsga2+moasha", w][0] > 0  # and still trained some to the full budget

    assert re.search(r"rank correlation epoch 1 vs epoch 9 accuracy: Kendall tau [+-]\d\.\d{3}", out)
    # Target 2's verdict follows the medians it prints (NSGA-II alone, target 1, is not run here).
    summary = json.loads(out_json.read_text())
    for w in (1, 2):
        ours, theirs = summary["runs"][f"nsga2+moasha W={w}"]["hv_at"], summary["runs"][f"random W={w}"]["hv_at"]
        wins = {p: statistics.median(ours[p]) > statistics.median(theirs[p]) for p in ours}
        assert summary["targets"][f"2 W={w}"] == wins
        said = "MET" if all(wins.values()) else "NOT MET" if not any(wins.values()) else "PARTLY MET"
        assert re.search(rf"^target 2 W={w}: .*: {said} \(", out, re.MULTILINE), out
    assert png.stat().st_size > 0
    assert summary["runs"]["random W=1"]["pruned"] == [0, 0]
