"""`nasopt crossval`: a fixed architecture or ensemble retrained on the other outer folds and
tested on each chosen fold, on the real 4-trial phantom study (1 epoch per fold)."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from nasopt.artifacts.record import TrialRecord
from nasopt.data.prepare import load_data
from nasopt.data.splits import outer_folds
from nasopt.evaluation.baselines import RATINGS_REFERENCE, SIZE_BASELINE, fit_predict
from nasopt.evaluation.metrics import METRICS, binary_metrics
from nasopt.storages.study import load_study
from nasopt.storages.url import open_storage
from tests.conftest import assert_user_error, nasopt


def study_of(where):
    return load_study("demo", open_storage(f"sqlite:///{where}/storage/nasopt.db", heartbeat=None))


def default_trial(study) -> TrialRecord:
    """What crossval picks without --trial: the front's best validation AUC, then fewer parameters."""
    front = [TrialRecord.from_trial(t) for t in study.best_trials]
    return min(front, key=lambda r: (-r.metrics["auc"] if math.isfinite(r.metrics["auc"]) else math.inf, r.params))


@pytest.fixture(scope="module")
def two_folds(searched_study):
    proc = nasopt(searched_study, "crossval", "--study", "demo", "--folds", "0,2", "--epochs", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "fold 0: training 1 network(s)" in proc.stderr  # progress goes to stderr, JSON alone to stdout
    return json.loads(proc.stdout)


def test_two_folds_give_fold_rows_and_a_pooled_row_over_the_studys_outer_folds(searched_study, two_folds):
    study, cfg = study_of(searched_study)
    ns = load_data(cfg.data, progress=False)
    fold_of = outer_folds(ns, cfg.split.n_folds, cfg.split.seed)
    folds = two_folds["folds"]
    assert [f["fold"] for f in folds] == [0, 2]
    assert [f["result"]["model"] for f in folds] == ["fold 0", "fold 2"]
    assert two_folds["pooled"]["result"]["model"] == "pooled" and two_folds["epochs"] == 1
    for f in folds:
        k = f["fold"]
        assert f["test_nodules"] == int((fold_of == k).sum()) and f["train_nodules"] == int((fold_of != k).sum())
        assert f["predictions"]["nodule"] == [m["nodule"] for m, j in zip(ns.meta, fold_of) if j == k]
        assert f["predictions"]["label"] == ns.labels[fold_of == k].tolist()
    assert two_folds["pooled"]["test_nodules"] == sum(f["test_nodules"] for f in folds)
    # Only the study's test fold is held out: fold 0 here, not fold 2.
    assert [f["held_out"] for f in folds] == [cfg.split.test_fold == 0, cfg.split.test_fold == 2]
    assert any("never seen by the search" in n and "optimistic" in n for n in two_folds["notes"])

    # No --trial: the Pareto-front trial with the best validation AUC.
    chosen = default_trial(study)
    assert [m["trial"] for m in two_folds["members"]] == [chosen.number]
    assert two_folds["members"][0]["lr"] == chosen.hparams["lr"]
    assert two_folds["pooled"]["result"]["params"] == chosen.params


def test_pooled_metrics_are_those_of_the_concatenated_predictions(two_folds):
    folds = two_folds["folds"]
    labels = np.concatenate([f["predictions"]["label"] for f in folds])
    prob = np.concatenate([f["predictions"]["prob_malignant"] for f in folds])
    assert ((prob >= 0) & (prob <= 1)).all()
    rows = [(f["result"], binary_metrics(f["predictions"]["label"], f["predictions"]["prob_malignant"])) for f in folds]
    rows.append((two_folds["pooled"]["result"], binary_metrics(labels, prob)))
    for result, expected in rows:
        assert set(result["metrics"]) == set(METRICS)
        for name, m in result["metrics"].items():
            assert m["value"] == pytest.approx(expected[name], nan_ok=True), (result["model"], name)
            if not math.isnan(m["value"]) and name != "ece":  # ECE's resamples are biased upward
                assert m["low"] <= m["value"] <= m["high"], (result["model"], name, m)


def test_baselines_are_fitted_on_each_fold_s_training_folds_and_pooled(searched_study, two_folds):
    _, cfg = study_of(searched_study)
    ns = load_data(cfg.data, progress=False)
    fold_of = outer_folds(ns, cfg.split.n_folds, cfg.split.seed)
    for f in two_folds["folds"]:
        train, test = ns.subset(np.flatnonzero(fold_of != f["fold"])), ns.subset(np.flatnonzero(fold_of == f["fold"]))
        for kind in (SIZE_BASELINE, RATINGS_REFERENCE):
            expected = fit_predict(kind, train.meta, train.labels, test.meta)
            np.testing.assert_allclose(f["predictions"][kind], expected, rtol=0, atol=1e-12)
    pooled = two_folds["pooled"]
    labels = np.concatenate([f["predictions"]["label"] for f in two_folds["folds"]])
    prob = np.concatenate([f["predictions"]["prob_malignant"] for f in two_folds["folds"]])
    assert [r["model"] for r in pooled["baselines"]] == [SIZE_BASELINE, RATINGS_REFERENCE]
    for row, comparison in zip(pooled["baselines"], pooled["comparisons"]):
        base = np.concatenate([f["predictions"][row["model"]] for f in two_folds["folds"]])
        assert row["metrics"]["auc"]["value"] == pytest.approx(roc_auc_score(labels, base))
        assert comparison["minus"] == row["model"] and comparison["model"] == "pooled"
        assert comparison["difference"] == pytest.approx(roc_auc_score(labels, prob) - roc_auc_score(labels, base))
        assert row["size_matched_auc"]["pairs"] == pooled["result"]["size_matched_auc"]["pairs"] > 0


def test_trial_option_cross_validates_that_trial_in_the_papers_columns(searched_study):
    study, _ = study_of(searched_study)
    records = [TrialRecord.from_trial(t) for t in study.trials]
    other = next(r for r in records if r.number != default_trial(study).number)
    proc = nasopt(
        searched_study, "crossval", "--study", "demo", "--trial", str(other.number), "--folds", "0", "--epochs", "1"
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"study 'demo' trial {other.number}" in out and f"{other.params:,}" in out
    assert "fold 0" in out and "pooled" in out and "size baseline" in out and "pooled minus size baseline: AUC" in out
    assert "fold 0 (the study's test fold) was never seen by the search" in " ".join(out.split())
    assert "LIDC phantom" in out


def test_ensemble_members_are_trained_on_the_other_folds_with_their_trials_settings(searched_study, tmp_path):
    db = f"sqlite:///{searched_study}/storage/nasopt.db"
    out = tmp_path / "e.safetensors"
    proc = nasopt(tmp_path, "export", "--study", "demo", "--storage", db, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    from nasopt.ensemble.module import load_ensemble

    header = load_ensemble(out).header
    proc = nasopt(
        tmp_path, "crossval", "--ensemble", str(out), "--storage", db, "--folds", "1", "--epochs", "1", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [m["trial"] for m in result["members"]] == [m.model.trial for m in header.members]
    assert [m["weight"] for m in result["members"]] == [m.weight for m in header.members]
    assert [f["fold"] for f in result["folds"]] == [1] and not result["folds"][0]["held_out"]
    assert result["pooled"]["result"]["params"] == sum(m["params"] for m in result["members"])
    assert any("of its trial in study 'demo'" in n for n in result["notes"])
    assert any("only the study's test fold 0 was never seen by the search" in n for n in result["notes"])


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--study", "demo", "--folds", "9"], ["--folds", "fold 9", "0-4"]),
        (["--study", "demo", "--folds", "two"], ["--folds 'two'"]),
        (["--study", "demo", "--trial", "999"], ["--trial 999", "does not exist"]),
        ([], ["--study", "--ensemble"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(searched_study, args, fragments):
    assert_user_error(nasopt(searched_study, "crossval", *args, "--epochs", "1"), *fragments)
