"""Provenance and ``nasopt retrain``: every trial records where it came from, a demo trial
retrained on CPU reproduces its stored validation predictions exactly, and a change to the data
is named when it does not."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna_dashboard import get_note

from nasopt.artifacts.checkpoint import load_model
from nasopt.artifacts.record import Key
from nasopt.data.noduleset import NoduleSet
from nasopt.search.provenance import FIELDS, git_state
from tests.conftest import DEMO, assert_user_error, nasopt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory) -> Path:
    """Two demo trials of one epoch, with their own data cache (the data test changes it)."""
    where = tmp_path_factory.mktemp("retrain")
    args = ["--config", DEMO, "--set", "data.max_scans=60", "--set", "train.epochs=1", "--set",
            f'data.cache_dir="{where / "cache"}"', "--threads", "2"]  # fmt: skip
    proc = nasopt(where, "search", "--study", "demo", "--n-trials", "2", "--no-front", *args)
    assert proc.returncode == 0, proc.stderr
    return where


def _study(where: Path) -> optuna.Study:
    return optuna.load_study(study_name="demo", storage=f"sqlite:///{where}/storage/nasopt.db")


def test_every_trial_records_its_provenance_and_its_note_shows_it(demo_study):
    for t in _study(demo_study).trials:
        p = t.user_attrs[Key.PROVENANCE]
        assert set(p) == {*FIELDS, "seed"} and p["seed"] == t.number  # the demo's study seed is 0
        assert p["torch"] == torch.__version__ and p["optuna"] == optuna.__version__ and p["numpy"] == np.__version__
        assert p["git"] == git_state() and re.fullmatch(r"[0-9a-f]{40}", p["git"]["commit"])
        assert p["deterministic"]["threads"] == 2 and p["deterministic"]["precision"] in ("bf16", "fp32")
        assert re.fullmatch(r"[0-9a-f]{16}", p["data"]) and re.fullmatch(r"[0-9a-f]{16}", p["split"])
        note = get_note(optuna.Trial(_study(demo_study), t._trial_id))
        (line,) = [ln for ln in note.splitlines() if ln.startswith("- provenance: ")]
        assert f"nasopt 0.1.0 @ {p['git']['commit'][:7]}" in line and f"seed {t.number};" in line
        assert f"data {p['data']}, split {p['split']}" in line


def test_retrain_reproduces_a_trials_validation_predictions_exactly(demo_study, tmp_path):
    proc = nasopt(demo_study, "retrain", "--study", "demo", "--trial", "1", "--out", str(tmp_path / "r.safetensors"))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"largest difference from its stored validation predictions 0 over \d+ nodules "
                     r"\(reproduced exactly\)", proc.stdout), proc.stdout  # fmt: skip
    assert "differs:" not in proc.stdout
    network, header = load_model(tmp_path / "r.safetensors")
    assert header.trial == 1 and header.study == "demo" and sum(p.numel() for p in network.parameters()) > 0


def test_retrain_names_a_changed_data_fingerprint(demo_study, tmp_path):
    changed = tmp_path / "copy"
    shutil.copytree(demo_study, changed)
    (cache,) = (demo_study / "cache").glob("phantom-*.safetensors")
    ns = NoduleSet.load(cache)
    ns.crops[:, 20:28, 20:28, 20:28] += 200  # every nodule's core 200 HU denser
    original = cache.read_bytes()
    try:
        ns.save(cache)
        proc = nasopt(changed, "retrain", "--study", "demo", "--trial", "0")
    finally:
        cache.write_bytes(original)
    assert proc.returncode == 0, proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("differs: data: recorded ")]
    assert re.fullmatch(r"differs: data: recorded [0-9a-f]{16}, now [0-9a-f]{16}", line)
    largest = float(re.search(r"validation predictions (\S+) over", proc.stdout).group(1))
    assert largest > 0, proc.stdout


def test_retrain_refuses_an_incomplete_trial_and_gone_artifacts_in_one_line(demo_study, tmp_path):
    assert_user_error(nasopt(demo_study, "retrain", "--study", "demo", "--trial", "7"),
                      "--trial 7: trial 7 of study 'demo' does not exist; trained trials: 0, 1")  # fmt: skip
    gone = tmp_path / "gone"
    shutil.copytree(demo_study, gone)
    for f in (gone / "storage" / "artifacts").iterdir():
        f.unlink()
    assert_user_error(nasopt(gone, "retrain", "--study", "demo", "--trial", "0"),
                      "trial 0: its validation predictions", "are missing from the artifact store")  # fmt: skip
    shutil.rmtree(gone / "storage" / "artifacts")
    assert_user_error(nasopt(gone, "retrain", "--study", "demo", "--trial", "0"), "which this host cannot reach")
