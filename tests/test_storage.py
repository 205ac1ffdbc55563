"""The storage layer's own promises, on real SQLite and PostgreSQL databases: workers leave
optuna-dashboard's notes out of what they read, a trial's record is one commit, and a parameter
the study has seen before is one statement."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna_dashboard import get_note, save_note

from nasopt.study import NOTE_PREFIX, open_storage
from nasopt.trial_record import set_user_attrs


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    return request.getfixturevalue("postgres_url")


def _study(storage, name: str) -> optuna.Study:
    sampler = optuna.samplers.NSGAIISampler(population_size=2, seed=0)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=["maximize", "minimize"])


def test_a_worker_writes_notes_that_the_dashboard_reads_but_does_not_read_them_back(url):
    worker = open_storage(url, heartbeat=None, read_notes=False)
    study = _study(worker, "notes")
    long = "x" * 5000  # longer than one system attribute: the dashboard splits it in three

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_float("x", 0, 1)
        save_note(trial, f"## Trial {trial.number}\n{long}")
        return x, 1 - x

    study.optimize(objective, n_trials=6)  # three NSGA-II generations: parent caches are written and read
    reader = open_storage(url, heartbeat=None, create=False)
    everything = reader.get_study_system_attrs(study._study_id)
    seen = worker.get_study_system_attrs(study._study_id)
    assert any(k.startswith(NOTE_PREFIX) for k in everything)
    assert seen == {k: v for k, v in everything.items() if not k.startswith(NOTE_PREFIX)}
    assert any(k.startswith("NSGAIISampler:parent:") for k in seen), seen  # NSGA-II still finds its cache
    read = optuna.load_study(study_name="notes", storage=reader)
    for t in read.trials:
        assert get_note(optuna.Trial(read, t._trial_id)) == f"## Trial {t.number}\n{long}"
    with pytest.raises(KeyError):
        worker.get_study_system_attrs(study._study_id + 1000)


def test_a_trials_record_is_one_commit(url):
    storage = open_storage(url, heartbeat=None)
    study = _study(storage, "record")
    trial = study.ask()
    commits: list[int] = []
    sqlalchemy.event.listen(storage.engine, "commit", lambda conn: commits.append(1))
    record = {"arch": {"stages": [[4, 8]]}, "params": 1234, "curve": [{"epoch": 1, "val_auc": 0.5}], "device": "cpu"}
    set_user_attrs(trial, record)
    assert len(commits) == 1
    set_user_attrs(trial, {"params": 99, "worker": {"index": 0}})  # overwrites one, adds one
    expected = record | {"params": 99, "worker": {"index": 0}}
    assert trial.user_attrs == expected  # the running trial's own view, as Trial.set_user_attr keeps it
    assert storage.get_trial_user_attrs(trial._trial_id) == expected
    study.tell(trial, (0.5, 1234.0))
    with pytest.raises(UpdateFinishedTrialError):
        set_user_attrs(trial, {"params": 1})


def test_storages_without_the_batch_call_get_the_attributes_one_by_one(tmp_path):
    storage = open_storage(f"journal:///{tmp_path}/j.log")
    trial = _study(storage, "journal").ask()
    set_user_attrs(trial, {"a": 1, "b": [2, 3]})
    assert trial.user_attrs == {"a": 1, "b": [2, 3]}


def test_a_known_parameter_is_one_statement_with_optunas_checks(url):
    storage = open_storage(url, heartbeat=None)
    study = _study(storage, "params")
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("n", 1, 4)), n_trials=1)
    trial = study.ask()
    statements: list[str] = []
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    x, n = trial.suggest_float("x", 0, 1), trial.suggest_int("n", 1, 4)
    writes = [s for s in statements if "trial_params" in s and not s.startswith("SELECT")]
    # Each parameter is one INSERT ... SELECT that checks the trial's state (Optuna: SELECT, INSERT).
    assert len(writes) == 2 and all(w.startswith("INSERT INTO trial_params") and "SELECT" in w for w in writes)
    study.tell(trial, (x, n))
    stored = storage.get_trial(trial._trial_id)
    assert stored.params == {"x": x, "n": n}
    assert stored.distributions == {"x": FloatDistribution(0, 1), "n": IntDistribution(1, 4)}
    with pytest.raises(UpdateFinishedTrialError):  # the trial is finished: Optuna's own error
        storage.set_trial_param(trial._trial_id, "y", 0.5, FloatDistribution(0, 1))
    late = study.ask()
    with pytest.raises(ValueError, match="Cannot set different distribution"):
        late.suggest_categorical("x", ["a", "b"])
