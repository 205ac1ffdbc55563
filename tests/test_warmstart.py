"""Warm starts: known networks queued with Optuna's enqueue_trial come back as exactly those
networks, a network outside the space is refused in one line, and with 4 workers each queued
network is trained exactly once."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nasopt.config.schema import load_config
from nasopt.errors import ConfigError
from nasopt.model.architecture import Architecture
from nasopt.search.space import decode
from nasopt.search.warmstart import genes, read_networks
from tests.conftest import DEMO, assert_user_error, nasopt, small

ROOT = Path(__file__).resolve().parents[1]
KNOWN = ROOT / "studies" / "known-networks.toml"
WIDE = ["space.widths=[4, 8, 16, 32, 64, 128, 256, 512]", "space.total_depth=[3, 10]"]


def _known() -> dict[str, Architecture]:
    tables = tomllib.loads(KNOWN.read_text())["network"]
    return {t["name"]: Architecture.from_dict({**t, "stem_width": 4}) for t in tables}


def test_every_known_network_decodes_back_to_itself_in_a_space_wide_enough():
    space = load_config(ROOT / "studies" / "naslung.toml", WIDE).space
    networks = read_networks(KNOWN, space)
    assert list(networks) == list(_known())
    for name, arch in _known().items():
        params = networks[name]
        # Unused width slots are left to the sampler: fill them with anything, decode ignores them.
        filled = {f"width_{s}_{b}": space.widths[-1] for s in range(space.stages) for b in range(4)} | params
        assert decode(filled, space) == arch, name


@pytest.mark.parametrize(
    "change, slot",
    [
        ({"stages": ((4, 4), (4, 8, 8), (8, 8, 48))}, "stages[2][2] = 48 is outside space.widths"),
        ({"stages": ((4, 8), (4, 8, 8), (8, 8, 16))}, "stages[1][0] = 4 is narrower than the block before (8)"),
        ({"stages": ((4, 4, 4), (8, 8, 8), (8, 8, 16, 16))}, "the total depth = 10 is outside space.total_depth"),
        ({"stages": ((4, 4, 4, 4, 4), (8,), (8,))}, "the blocks of stages[0] = 5 is outside"),
        ({"margin": 5}, "margin = 5 is outside space.margins"),
    ],
)
def test_a_network_outside_the_space_is_refused_naming_its_slot(change, slot):
    space = load_config(DEMO).space
    arch = Architecture(((4, 4), (4, 8, 8), (8, 8, 16)), True, (True, True, True), 4)
    changed = Architecture(**{**vars(arch), **change})
    with pytest.raises(ConfigError, match=re.escape(slot)):
        genes(changed, space)


def test_enqueue_refuses_a_file_with_one_bad_network_and_queues_nothing(tmp_path, cache_dir):
    url = f"sqlite:///{tmp_path}/s.db"
    args = ["enqueue", "--study", "w", "--storage", url, "--file", str(KNOWN), *small(cache_dir)[:-2]]
    refused = nasopt(tmp_path, *args)
    assert_user_error(refused, "network 'NAS-Lung published default': the total depth = 10")
    assert not (tmp_path / "s.db").exists() or not optuna.get_all_study_names(url)


def test_queued_networks_train_exactly_once_with_four_workers(tmp_path, cache_dir):
    fits = tmp_path / "fits.toml"
    fits.write_text(
        '[[network]]\nname = "0.03 M"\nstages = [[4, 4], [4, 8, 8], [8, 8, 16]]\ncbam_stem = true\n'
        "cbam_stages = [true, true, true]\nmargin = 4\n\n"
        '[[network]]\nname = "narrow"\nstages = [[4], [8], [8, 16]]\ncbam_stem = false\n'
        "cbam_stages = [false, true, false]\nmargin = 1\nlr = 1e-3\nbatch_size = 8\n"
        + "".join(
            f'[[network]]\nname = "plain {w}"\nstages = [[4], [{w}], [{w}]]\ncbam_stem = false\n'
            "cbam_stages = [false, false, false]\nmargin = 2\n"
            for w in (4, 8, 16)
        )
    )
    url = f"sqlite:///{tmp_path}/s.db"
    common = ["--study", "w", "--storage", url, *small(cache_dir)[:-2], "--set", 'fidelity.strategy="none"']
    queued = nasopt(tmp_path, "enqueue", "--file", str(fits), *common)
    assert queued.returncode == 0, queued.stdout + queued.stderr
    assert "queued 5 of 5 networks" in queued.stdout
    again = nasopt(tmp_path, "enqueue", "--file", str(fits), *common)
    assert "queued 0 of 5 networks (5 already queued or run)" in again.stdout
    run = nasopt(tmp_path, "launch", "--workers", "4", "--max-trials", "6", *common)
    assert run.returncode == 0, run.stdout + run.stderr
    trials = optuna.load_study(study_name="w", storage=url).get_trials()
    warm = sorted(t.user_attrs["warm_start"] for t in trials if "warm_start" in t.user_attrs)
    assert warm == ["0.03 M", "narrow", "plain 16", "plain 4", "plain 8"]  # each queued network ran once
    assert {t.state for t in trials if "warm_start" in t.user_attrs} == {TrialState.COMPLETE}
    narrow = next(t for t in trials if t.user_attrs.get("warm_start") == "narrow")
    assert Architecture.from_dict(narrow.user_attrs["arch"]) == Architecture(((4,), (8,), (8, 16)), False,
                                                                            (False, True, False), 1)  # fmt: skip
    assert (narrow.params["lr"], narrow.params["batch_size"]) == (1e-3, 8)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6  # 5 queued, 1 sampled: the budget is exact
    # Another study starts from this one's front: the same networks, with their trials' settings.
    seeded = nasopt(tmp_path, "enqueue", "--from-study", "w", "--front", "--study", "w2", *common[2:])
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    front = optuna.load_study(study_name="w", storage=url).best_trials
    waiting = optuna.load_study(study_name="w2", storage=url).get_trials(states=(TrialState.WAITING,))
    assert f"queued {len(front)} of {len(front)} networks" in seeded.stdout
    space = load_config(DEMO).space
    for t in front:
        (mine,) = [w for w in waiting if w.user_attrs["warm_start"] == f"w trial {t.number}"]
        fixed = mine.system_attrs["fixed_params"]
        filled = {f"width_{s}_{b}": 4 for s in range(space.stages) for b in range(4)} | fixed
        assert decode(filled, space) == Architecture.from_dict(t.user_attrs["arch"])
        assert (fixed["lr"], fixed["batch_size"]) == (t.params["lr"], t.params["batch_size"])
    # A study whose space cannot hold them: one line naming the network and its slot; nothing queued.
    narrower = nasopt(tmp_path, "enqueue", "--from-study", "w", "--study", "w3", *common[2:],
                      "--set", "space.widths=[4, 8]")  # fmt: skip
    assert_user_error(narrower, "--from-study: w trial ", "is outside space.widths [4, 8]")
    assert "w3" not in [s.study_name for s in optuna.get_all_study_summaries(url)]


TABLE = ROOT / "benchmarks" / "nasbench" / "naslung-phantom.json.gz"


def _table_rows() -> list[dict]:
    import gzip
    import json

    with gzip.open(TABLE, "rt") as f:
        return json.load(f)["rows"]


def test_from_table_queues_the_tables_front_as_optuna_ranks_it():
    from nasopt.search.warmstart import from_table

    space = load_config(ROOT / "studies" / "naslung.toml").space
    rows = _table_rows()
    ranked = optuna.create_study(directions=["maximize", "minimize"])
    for row in rows:
        ranked.add_trial(optuna.trial.create_trial(values=[row["val_accuracy"][-1], row["n_params"]]))
    expected = sorted(t.number for t in ranked.best_trials)
    networks = from_table(TABLE, space)
    assert list(networks) == [f"{TABLE.name} row {i}" for i in expected]
    for i in expected:
        params = networks[f"{TABLE.name} row {i}"]
        filled = {f"width_{s}_{b}": space.widths[-1] for s in range(space.stages) for b in range(4)} | params
        assert decode(filled, space) == Architecture.from_dict(rows[i]["arch"])
        assert params["lr"] == rows[i]["params"]["lr"] and params["batch_size"] == rows[i]["params"]["batch_size"]
    top = from_table(TABLE, space, top=3)
    best = sorted(range(len(rows)), key=lambda i: -rows[i]["val_accuracy"][-1])[:3]
    assert sorted(top) == sorted(f"{TABLE.name} row {i}" for i in best)


def test_an_enqueue_file_with_an_unknown_key_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[network]]\nname = "x"\nstages = [[4], [4], [4]]\ncbam_stem = true\n'
                   'cbam_stages = [true, true, true]\nmargin = 2\nwidth = 8\n')  # fmt: skip
    proc = nasopt(tmp_path, "enqueue", "--study", "t", "--config", DEMO, "--file", str(bad))
    assert_user_error(proc, f"{bad}: network 'x': unknown key 'width'; a network has batch_size, cbam_stages")
    assert not (tmp_path / "storage" / "nasopt.db").exists()


def test_from_table_refuses_a_row_outside_the_space_and_a_file_that_is_no_table(tmp_path):
    proc = nasopt(tmp_path, "enqueue", "--study", "t", "--config", DEMO, "--from-table", str(TABLE))
    assert_user_error(proc, f"--from-table: {TABLE.name} row ", "is outside space.widths", "widen the study's space")
    proc = nasopt(tmp_path, "enqueue", "--study", "t", "--config", DEMO, "--from-table", str(KNOWN))
    assert_user_error(proc, f"--from-table {KNOWN}: not a nasopt tabular benchmark")
    assert not (tmp_path / "storage" / "nasopt.db").exists()


def test_enqueue_from_table_queues_each_row_once(tmp_path):
    args = ["--study", "t", "--config", str(ROOT / "studies" / "naslung.toml"), "--from-table", str(TABLE)]
    first = nasopt(tmp_path, "enqueue", *args)
    assert first.returncode == 0, first.stderr
    n = int(re.search(r"queued (\d+) of", first.stdout).group(1))
    assert n >= 2 and f"queued {n} of {n} networks" in first.stdout
    again = nasopt(tmp_path, "enqueue", *args)
    assert f"queued 0 of {n} networks ({n} already queued or run)" in again.stdout, again.stdout
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/storage/nasopt.db")
    assert len(study.get_trials(states=(TrialState.WAITING,))) == n
