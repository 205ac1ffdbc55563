"""From a search to a model: export, load, evaluate, ONNX, on a real 4-trial phantom study."""

import json
import shutil

import numpy as np
import onnxruntime
import optuna
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, recall_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nasopt.artifacts.record import Key, read_predictions, val_key
from nasopt.config.schema import load_config
from nasopt.data.prepare import load_data
from nasopt.data.splits import outer_folds, study_sets
from nasopt.ensemble.calibration import apply_temperature, choose_threshold, fit_temperature
from nasopt.ensemble.export import export_study
from nasopt.ensemble.module import load_ensemble
from nasopt.evaluation.baselines import RATING_KEYS
from nasopt.inference.core import center_crop
from nasopt.search.samplers import make_sampler
from nasopt.storages.study import create_or_load, load_study
from nasopt.storages.url import open_storage
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
    onnx, ts, bundle = out.with_suffix(".onnx"), out.with_suffix(".ts"), out.parent / "nodule_classification"
    proc = export(searched_study, out, "--onnx", str(onnx), "--torchscript", str(ts), "--monai-bundle", str(bundle))
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


def test_export_writes_the_onnx_torchscript_and_monai_files_it_was_asked_for(searched_study, greedy_file):
    """The command line's deployment flags; tests/test_deploy.py tests the files themselves."""
    _, cfg = study_of(searched_study)
    val = study_sets(cfg, load_data(cfg.data, progress=False)).val
    hu = center_crop(torch.from_numpy(val.crops), 32).float()[:, None]
    ens = load_ensemble(greedy_file)
    with torch.no_grad():
        expected, labels = ens(hu).numpy(), ens.classify(hu).numpy()
    session = onnxruntime.InferenceSession(str(greedy_file.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    prob, malignant = session.run(None, {"hu": hu.numpy()})
    assert prob.shape == (len(val),) and np.abs(prob - expected).max() < 1e-5 and (malignant == labels).all()
    scripted = torch.jit.load(str(greedy_file.with_suffix(".ts")))
    with torch.no_grad():
        prob, malignant = scripted(hu)
    assert np.abs(prob.numpy() - expected).max() < 1e-5 and (malignant.numpy() == labels).all()
    bundle = greedy_file.parent / "nodule_classification"
    assert {p.name for p in bundle.rglob("*") if p.is_file()} == {"metadata.json", "inference.json", "model.ts"}


def test_evaluate_reports_scikit_learn_metrics_with_intervals_on_the_test_fold(searched_study, greedy_file):
    proc = nasopt(searched_study, "evaluate", str(greedy_file), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    _, cfg = study_of(searched_study)
    test = study_sets(cfg, load_data(cfg.data, progress=False)).test
    prob, members = load_ensemble(greedy_file).predict(test.crops)
    assert result["test_nodules"] == len(test) and result["bootstrap_resamples"] >= 1000
    rows = {r["model"]: r for r in result["results"]}
    assert result["results"][0]["model"] == "ensemble"
    ens = load_ensemble(greedy_file)
    # A 1-epoch study can show no signal on validation; export then ships no temperature (tested below).
    calibrated = ens.header.calibration is not None
    assert list(rows) == ["ensemble", *(["ensemble, uncalibrated"] if calibrated else []), "size baseline"] + [
        "ratings reference",
        *(f"trial {m.model.trial}" for m in ens.header.members),
    ]
    assert rows["ensemble"]["threshold"] == ens.threshold == ens.header.operating_point.threshold
    raw = members @ ens.weights.numpy().astype(np.float64)
    if calibrated:
        assert rows["ensemble, uncalibrated"]["threshold"] == 0.5
    y = test.labels
    models = [r for r in result["results"] if r["role"] == "model"]
    for row, p in zip(models, [prob, *([raw] if calibrated else []), *members.T], strict=True):
        m, pred = row["metrics"], p >= row["threshold"]
        assert m["accuracy"]["value"] == accuracy_score(y, pred)
        assert m["sensitivity"]["value"] == recall_score(y, pred)
        assert m["specificity"]["value"] == recall_score(y, pred, pos_label=0)
        assert m["f1"]["value"] == f1_score(y, pred, zero_division=0.0)
        assert m["auc"]["value"] == roc_auc_score(y, p)
        assert m["brier"]["value"] == pytest.approx(brier_score_loss(y, p.astype(np.float64)), abs=1e-12)
        for name, v in m.items():
            if name != "ece":  # ECE is biased upward under resampling; its interval can lie above it
                assert v["low"] <= v["value"] <= v["high"], (row["model"], name, v)
    # The size baseline and the ratings reference: scikit-learn's, fitted on the search split.
    sets = study_sets(cfg, load_data(cfg.data, progress=False))
    search = sets.train.meta + sets.val.meta
    search_y = np.concatenate([sets.train.labels, sets.val.labels])
    for name, keys in (("size baseline", []), ("ratings reference", RATING_KEYS)):

        def features(meta, keys=keys):
            return np.array([[np.log(r["diameter_mm"]), *(r[k] for k in keys)] for r in meta])

        lr = make_pipeline(StandardScaler(), LogisticRegression()).fit(features(search), search_y)
        expected = lr.predict_proba(features(test.meta))[:, 1]
        assert rows[name]["metrics"]["auc"]["value"] == pytest.approx(roc_auc_score(y, expected), abs=1e-12)
        assert rows[name]["role"] == ("baseline" if not keys else "reference")
    # Paired differences, ensemble minus each.
    comparisons = {c["minus"]: c for c in result["comparisons"]}
    assert set(comparisons) == {"size baseline", "ratings reference"}
    for name, c in comparisons.items():
        diff = rows["ensemble"]["metrics"]["auc"]["value"] - rows[name]["metrics"]["auc"]["value"]
        assert c["difference"] == pytest.approx(diff, abs=1e-12) and c["low"] <= c["difference"] <= c["high"]
    diameters = np.array([r["diameter_mm"] for r in test.meta])
    pairs = sum(abs(diameters[i] - diameters[j]) <= 2.0 for i in np.flatnonzero(y == 0) for j in np.flatnonzero(y == 1))
    assert all(r["size_matched_auc"]["pairs"] == pairs for r in result["results"])
    assert any("phantom" in note for note in result["notes"])

    figures = searched_study / "figures"
    table = nasopt(searched_study, "evaluate", str(greedy_file), "--figures", str(figures))
    assert table.returncode == 0 and "held-out test fold" in table.stdout and "size baseline" in table.stdout
    assert "ensemble minus size baseline: AUC" in table.stdout and "paired 95% interval" in table.stdout
    for name in ("roc.png", "reliability.png"):
        assert (figures / name).read_bytes().startswith(b"\x89PNG")


def test_export_calibrates_and_chooses_its_threshold_on_validation(searched_study, greedy_file):
    study, cfg = study_of(searched_study)
    ens = load_ensemble(greedy_file)
    header = ens.header
    assert header.operating_point.rule == "youden"
    # Refit from the members' stored validation predictions, as the export did.
    val = study_sets(cfg, load_data(cfg.data, progress=False)).val
    _, members = ens.predict(val.crops)  # the stored validation predictions, exactly (tested above)
    weights = np.array([m.weight for m in header.members])
    raw = members.astype(np.float64) @ (weights / weights.sum())
    temperature = fit_temperature(val.labels, raw)
    if temperature is None:  # a 1-epoch study whose validation shows no signal: nothing is shipped
        assert header.calibration is None and ens.temperature == 1.0
    else:
        assert header.calibration.fitted_on == "validation predictions" and header.calibration.val_nodules > 0
        assert header.calibration.temperature == pytest.approx(temperature, rel=1e-6)
        assert ens.temperature == header.calibration.temperature
    calibrated = apply_temperature(raw, temperature)
    assert log_loss(val.labels, calibrated) <= log_loss(val.labels, raw) + 1e-12
    assert header.operating_point.threshold == pytest.approx(choose_threshold(val.labels, calibrated, "youden"))
    # The shipped ensemble, run on the validation crops, decides exactly as export measured there.
    hu = center_crop(torch.from_numpy(val.crops), 32)[:, None]
    with torch.no_grad():
        decided = ens.classify(hu).numpy()
    assert recall_score(val.labels, decided) == header.operating_point.val_sensitivity
    assert recall_score(val.labels, decided, pos_label=0) == header.operating_point.val_specificity


def test_the_test_fold_fits_nothing(searched_study, tmp_path, monkeypatch):
    """Shuffling the test fold's labels leaves the members, temperature and threshold unchanged."""
    import nasopt.ensemble.export
    from nasopt.data.prepare import load_data as real_load_data

    url = f"sqlite:///{searched_study}/storage/nasopt.db"
    _, cfg = study_of(searched_study)
    first = load_ensemble(export_study("demo", url, tmp_path / "a.safetensors").path).header

    def shuffled_test_labels(data, **kwargs):
        ns = real_load_data(data, **kwargs)
        test = np.flatnonzero(outer_folds(ns, cfg.split.n_folds, cfg.split.seed) == cfg.split.test_fold)
        labels = ns.labels.copy()
        labels[test] = np.random.default_rng(0).permutation(labels[test])
        assert not np.array_equal(labels, ns.labels)
        return type(ns)(ns.crops, labels, ns.meta, ns.source, ns.params, ns.folds)

    monkeypatch.setattr(nasopt.ensemble.export, "load_data", shuffled_test_labels)
    second = load_ensemble(export_study("demo", url, tmp_path / "b.safetensors").path).header
    assert second.calibration == first.calibration and second.operating_point == first.operating_point
    assert [m.model.trial for m in second.members] == [m.model.trial for m in first.members]


def test_operating_points_calibration_off_and_bad_targets(searched_study, tmp_path):
    out = tmp_path / "sens.safetensors"
    proc = export(searched_study, out, "--operating-point", "sensitivity=0.9", "--calibration", "none")
    header = load_ensemble(out).header
    assert header.calibration is None and header.operating_point.rule == "sensitivity=0.9"
    assert header.operating_point.val_sensitivity >= 0.9
    assert "calibration: none; threshold" in proc.stdout
    bad = tmp_path / "bad.safetensors"
    assert_user_error(
        nasopt(searched_study, "export", "--study", "demo", "--out", str(bad), "--operating-point", "sensitivity=1.5"),
        "--operating-point 'sensitivity=1.5'",
        "sensitivity=0.90",
    )
    assert not bad.exists()
    taken = tmp_path / "taken_classification"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert_user_error(
        nasopt(searched_study, "export", "--study", "demo", "--out", str(bad), "--monai-bundle", str(taken)),
        str(taken),
        "--force",
    )
    assert not bad.exists() and [p.name for p in taken.iterdir()] == ["keep.txt"]  # refused before any work
    _, cfg = study_of(searched_study)
    val = study_sets(cfg, load_data(cfg.data, progress=False)).val
    for calibration in ("temperature", "none"):
        export(searched_study, out, "--metric", "logloss", "--select", "topk", "--k", "2", "--calibration", calibration)
        ens = load_ensemble(out)
        members = ens.predict(val.crops)[1].astype(np.float64)
        raw = members @ ens.weights.numpy()
        shipped = apply_temperature(raw, fit_temperature(val.labels, raw)) if calibration == "temperature" else raw
        # The validation log loss recorded is that of what the file outputs, calibrated or not.
        assert ens.header.selection.metric == "logloss"
        assert ens.header.selection.val_score == pytest.approx(log_loss(val.labels, shipped), rel=1e-6)


def test_an_ensemble_file_from_before_calibration_still_loads_and_evaluates(searched_study, greedy_file, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(greedy_file, framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta["nasopt"])
    del header["calibration"], header["operating_point"]
    old = tmp_path / "old.safetensors"
    save_file(tensors, old, metadata={**meta, "nasopt": json.dumps(header)})
    ens = load_ensemble(old)
    assert ens.temperature == 1.0 and ens.threshold == 0.5
    proc = nasopt(searched_study, "evaluate", str(old), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert any("predates calibration" in note for note in result["notes"])
    assert result["results"][0]["threshold"] == 0.5 and "ensemble, uncalibrated" not in str(result["results"])


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
    assert_user_error(nasopt(copy, "export", "--study", "empty", "--out", str(out)), "no trained trial")

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
