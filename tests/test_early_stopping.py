"""MO-ASHA in a real search: trials stop at rungs exactly as the fidelity rule says, end PRUNED with
their rung values, and only full-budget trials reach the front, the export and the report."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from nasopt.search.pruners.moasha import MOASHA, to_minimize
from tests.conftest import assert_user_error, nasopt, small

MOASHA_SET = ["--set", "train.epochs=4", "--set", 'fidelity.strategy="moasha"']  # rungs at epochs 1 and 3


def test_trials_stop_where_the_rule_says_and_only_full_budget_trials_count(tmp_path, cache_dir):
    proc = nasopt(tmp_path, "search", "--study", "m", "--n-trials", "8", *small(cache_dir), *MOASHA_SET)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="m", storage=f"sqlite:///{tmp_path}/storage/nasopt.db")
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete and len(pruned) + len(complete) == 8
    assert "stopped early at epoch" in proc.stdout

    # One worker runs the trials in number order, so each reached a rung after every lower-numbered
    # trial that got there: replay the rule on the stored rung values and compare every decision.
    rule = MOASHA(1, 4, 3)
    directions = ["maximize", "minimize"]  # val_accuracy, params
    for t in trials:
        rungs = t.user_attrs["rungs"]
        stopped_at = t.user_attrs.get("stopped_at_epoch")
        reached = [e for e in rule.levels if stopped_at is None or e <= stopped_at]
        assert sorted(map(int, rungs)) == reached
        for epoch in reached:
            others = [
                o.user_attrs["rungs"][str(epoch)] for o in trials[: t.number] if str(epoch) in o.user_attrs["rungs"]
            ]
            mine = rungs[str(epoch)]
            keep = rule.decide(to_minimize(mine, directions), [to_minimize(o, directions) for o in others]).keep_going
            assert keep == (epoch != stopped_at), (t.number, epoch)
        assert mine[1] == t.user_attrs["params"]  # the parameter count is an objective from the first rung

    for t in pruned:  # a stopped trial keeps why, and its curve up to the rung
        assert t.user_attrs["stop_reason"] and len(t.user_attrs["curve"]) == t.user_attrs["stopped_at_epoch"]
        assert "artifact_weights" not in t.user_attrs
    for t in complete:
        assert len(t.user_attrs["curve"]) == 4 and "artifact_weights" in t.user_attrs
    front = {t.number for t in study.best_trials}
    assert front <= {t.number for t in complete}
    assert f"Pareto front of study 'm' ({len(complete)} complete trials)" in proc.stdout
    report = nasopt(tmp_path, "report", "--study", "m", "--out", "report")
    assert report.returncode == 0, report.stderr
    assert f"{len(complete)} complete trials" in (tmp_path / "report" / "summary.md").read_text()
    exported = nasopt(tmp_path, "export", "--study", "m", "--select", "topk", "--k", "8", "--out", "e.safetensors")
    assert exported.returncode == 0, exported.stderr
    members = {int(line.split()[1]) for line in exported.stdout.splitlines() if line.strip().startswith("trial")}
    assert members == {t.number for t in complete}  # topk over every trial exports the full-budget ones only


def test_fidelity_settings_are_part_of_the_study_configuration(tmp_path, cache_dir):
    first = nasopt(tmp_path, "search", "--study", "f", "--n-trials", "1", *small(cache_dir), *MOASHA_SET)
    assert first.returncode == 0, first.stderr
    no_stopping = ["--set", "train.epochs=4", "--set", 'fidelity.strategy="none"']
    other = nasopt(tmp_path, "search", "--study", "f", "--n-trials", "1", *small(cache_dir), *no_stopping)
    assert_user_error(other, "different configuration")
    bad = nasopt(
        tmp_path, "search", "--study", "g", *small(cache_dir), *MOASHA_SET, "--set", "fidelity.reduction_factor=1"
    )
    assert_user_error(bad, "fidelity.reduction_factor")
