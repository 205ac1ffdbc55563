"""From a search to a model: export, load, evaluate, ONNX, on a real 4-trial phantom study."""

import json
import shutil

import numpy as np
import onnxruntime
import optuna
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

from nasopt.config import load_config
from nasopt.data.prepare import load_data
from nasopt.data.splits import study_sets
from nasopt.ensemble import load_ensemble
from nasopt.inference import center_crop
from nasopt.sampler import make_sampler
from nasopt.study import create_or_load, load_study, open_storage
from nasopt.trial_record import Key, read_predictions, val_key
from tests.conftest import assert_user_error, nasopt


def study_of(where):
    return load_study("demo", open_storage(f"sqlite:///{where}/storage/nasopt.db", heartbeat=None))


def export(where, out, *args):
    proc = nasopt(where, "export", "--study", "demo", "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def greedy_file(searched_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "ensemble.safetensors"
    onnx = out.with_suffix(".onnx")
    proc = export(searched_study, out, "--onnx", str(onnx))
    assert f"{out}: " in proc.stdout and "greedy selection" in proc.stdout
    return out


def test_loaded_members_reproduce_their_stored_validation_predictions_exactly(searched_study, greedy_file):
    study, cfg = study_of(searched_study)
    ens = load_ensemble(greedy_file)
    val = study_sets(cfg, load_data(cfg.data, progress=False)).val
    _, members = ens.predict(val.crops)
    trials = {t.number: t for t in study.trials}
    for i, entry in enumerate(ens.header.members):
        artifact = trials[entry.model.trial].user_attrs[Key.VAL_PREDICTIONS]
        nodules, labels, stored = read_predictions(searched_study / "storage" / "artifacts" / artifact)
        assert nodules == [m["nodule"] for m in val.meta] and np.array_equal(labels, val.labels)
        assert np.abs(members[:, i] - stored).max() == 0.0
    # The Python API: a module from HU crops to probabilities.
    import nasopt

    api = nasopt.load_ensemble(greedy_file)
    x = center_crop(torch.from_numpy(val.crops[:5]), 32)[:, None]
    with torch.no_grad():
        assert np.allclose(api(x).numpy(), ens.predict(val.crops[:5])[0], atol=1e-6)


def test_greedy_export_is_at_least_the_best_trial_and_records_its_split(searched_study, greedy_file):
    study, cfg = study_of(searched_study)
    header = load_ensemble(greedy_file).header
    best_single = max(t.user_attrs[val_key("auc")] for t in study.trials)
    assert header.selection.rule == "greedy" and header.selection.val_score >= best_single
    assert header.study == "demo" and not header.refit
    assert header.split == cfg.split.model_dump(mode="json") and header.data["max_scans"] == 60
    sets = study_sets(cfg, load_data(cfg.data, progress=False))
    assert set(header.search_patients) == set(sets.train.patients) | set(sets.val.patients)
    assert not set(header.search_patients) & set(sets.test.patients)


def test_onnx_graph_matches_torch(searched_study, greedy_file):
    _, cfg = study_of(searched_study)
    val = study_sets(cfg, load_data(cfg.data, progress=False)).val
    hu = center_crop(torch.from_numpy(val.crops), 32).float()[:, None]
    with torch.no_grad():
        expected = load_ensemble(greedy_file)(hu).numpy()
    session = onnxruntime.InferenceSession(str(greedy_file.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"hu": hu.numpy()})
    assert got.shape == (len(val),) and np.abs(got - expected).max() < 1e-5


def test_evaluate_reports_scikit_learn_metrics_with_intervals_on_the_test_fold(searched_study, greedy_file):
    proc = nasopt(searched_study, "evaluate", str(greedy_file), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    _, cfg = study_of(searched_study)
    test = study_sets(cfg, load_data(cfg.data, progress=False)).test
    prob, members = load_ensemble(greedy_file).predict(test.crops)
    assert result["test_nodules"] == len(test) and result["bootstrap_resamples"] >= 1000
    assert [r["model"] for r in result["results"]][0] == "ensemble"
    assert len(result["results"]) == 1 + members.shape[1]
    y = test.labels
    for row, p in zip(result["results"], [prob, *members.T]):
        m, pred = row["metrics"], p >= 0.5
        assert m["accuracy"]["value"] == accuracy_score(y, pred)
        assert m["sensitivity"]["value"] == recall_score(y, pred)
        assert m["specificity"]["value"] == recall_score(y, pred, pos_label=0)
        assert m["f1"]["value"] == f1_score(y, pred, zero_division=0.0)
        assert m["auc"]["value"] == roc_auc_score(y, p)
        for name, v in m.items():
            assert v["low"] <= v["value"] <= v["high"], (row["model"], name, v)
    assert any("phantom" in note for note in result["notes"])

    table = nasopt(searched_study, "evaluate", str(greedy_file))
    assert table.returncode == 0 and "held-out test fold" in table.stdout and "ensemble" in table.stdout


def test_evaluate_refuses_a_test_fold_the_search_has_seen(searched_study, greedy_file):
    # More scans: patients move between folds, so some of the new test fold was searched on.
    proc = nasopt(searched_study, "evaluate", str(greedy_file), "--data", "max_scans=90")
    assert_user_error(proc, "were in the search split")


def test_pareto_topk_budget_and_refit(searched_study, tmp_path):
    study, _ = study_of(searched_study)
    params = sorted(t.user_attrs[Key.PARAMS] for t in study.trials)
    out = tmp_path / "pareto.safetensors"
    export(searched_study, out, "--select", "pareto")
    assert {m.model.trial for m in load_ensemble(out).header.members} == {t.number for t in study.best_trials}

    budget = params[0] + params[1]
    export(searched_study, out, "--select", "topk", "--k", "4", "--max-params", str(budget), "--metric", "accuracy")
    ens = load_ensemble(out)
    assert sum(p.numel() for p in ens.parameters()) <= budget and ens.header.selection.max_params == budget

    export(searched_study, out, "--select", "topk", "--k", "1", "--refit")
    refit = load_ensemble(out).header
    original = {t.number: t for t in study.trials}[refit.members[0].model.trial]
    assert refit.refit and refit.members[0].model.metrics == {}
    assert list(refit.members[0].model.norm) != original.user_attrs[Key.NORM]  # normalised over train + validation

    assert_user_error(
        nasopt(searched_study, "export", "--study", "demo", "--out", str(out), "--max-params", "10"),
        "--max-params 10",
        "no trial fits",
    )


def test_export_errors_are_one_line(searched_study, tmp_path):
    out = tmp_path / "e.safetensors"
    assert_user_error(nasopt(searched_study, "export", "--study", "nope", "--out", str(out)), "no study named 'nope'")

    # A study with no complete trial.
    copy = tmp_path / "copy"
    shutil.copytree(searched_study / "storage", copy / "storage")
    url = f"sqlite:///{copy}/storage/nasopt.db"
    cfg = load_config(None)
    create_or_load("empty", cfg, open_storage(url), make_sampler("random", cfg))
    assert_user_error(nasopt(copy, "export", "--study", "empty", "--out", str(out)), "no complete trial")

    # Weights missing from the artifact store.
    study, _ = study_of(copy)
    best = max(study.trials, key=lambda t: t.user_attrs[val_key("auc")])
    (copy / "storage" / "artifacts" / best.user_attrs[Key.WEIGHTS]).unlink()
    err = assert_user_error(
        nasopt(copy, "export", "--study", "demo", "--out", str(out), "--select", "topk", "--k", "1"),
        f"trial {best.number}",
        "missing from the artifact store",
    )
    assert str(copy / "storage" / "artifacts") in err
    assert not out.exists()
    assert optuna.load_study(study_name="demo", storage=url).trials  # nothing lost
