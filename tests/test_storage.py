"""The storage layer's own promises, on real SQLite and PostgreSQL databases: workers leave
optuna-dashboard's notes out of what they read, a trial's writes and its note are one commit each,
and trials read back exactly as Optuna's own storage reads them."""

from __future__ import annotations

import time
from datetime import datetime

import optuna
import pytest
import sqlalchemy
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial
from optuna_dashboard import get_note
from optuna_dashboard import save_note as dashboard_save_note
from optuna_dashboard._note import get_note_from_system_attrs

from nasopt.storages.rdb import NOTE_PREFIX
from nasopt.storages.url import lost_creation_race, open_storage, quiet_experimental
from nasopt.storages.writes import deferred_writes, save_note, set_user_attrs


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
        dashboard_save_note(trial, f"## Trial {trial.number}\n{long}")
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


def _commits(storage) -> list[int]:
    commits: list[int] = []
    sqlalchemy.event.listen(storage.engine, "commit", lambda conn: commits.append(1))
    return commits


def test_a_deferred_block_is_one_commit_with_optunas_checks(url, tmp_path):
    storage = open_storage(url, heartbeat=None)
    study = _study(storage, "deferred")
    first = study.ask()
    with deferred_writes(first):  # the study's first sight of each parameter: written at once, Optuna's way
        first.suggest_float("x", 0, 1)
        first.suggest_int("n", 1, 4)
        assert storage.get_trial(first._trial_id).params == first.params
    study.tell(first, (0.5, 2))

    trial = study.ask()
    store = FileSystemArtifactStore(str(tmp_path))
    (tmp_path / "w.bin").write_bytes(b"weights")
    commits = _commits(storage)
    with deferred_writes(trial):
        x, n = trial.suggest_float("x", 0, 1), trial.suggest_int("n", 1, 4)
        set_user_attrs(trial, {"arch": [4, 8], "params": 12})
        artifact = upload_artifact(artifact_store=store, file_path=str(tmp_path / "w.bin"), study_or_trial=trial)
        with deferred_writes(trial):  # nested: the outer block commits
            set_user_attrs(trial, {"params": 13})
        assert not commits
        assert storage.get_trial(trial._trial_id).params == {}  # nothing written yet
    assert len(commits) == 1
    stored = storage.get_trial(trial._trial_id)
    assert stored.params == {"x": x, "n": n} == trial.params
    assert stored.distributions == {"x": FloatDistribution(0, 1), "n": IntDistribution(1, 4)}
    assert stored.user_attrs == {"arch": [4, 8], "params": 13} == trial.user_attrs
    assert [m.artifact_id for m in get_all_artifact_meta(stored, storage=storage)] == [artifact]  # as Optuna records it
    with pytest.raises(ValueError, match="Cannot set different distribution"):  # checked at once, as Optuna does
        with deferred_writes(trial):
            trial.suggest_categorical("x", ["a", "b"])

    commits.clear()
    with pytest.raises(RuntimeError), deferred_writes(trial):  # a block that raises still commits its writes
        set_user_attrs(trial, {"fail_reason": "diverged"})
        raise RuntimeError
    assert len(commits) == 1 and storage.get_trial(trial._trial_id).user_attrs["fail_reason"] == "diverged"

    study.tell(trial, (x, n))
    with pytest.raises(UpdateFinishedTrialError), deferred_writes(trial):  # the state is checked at the commit
        set_user_attrs(trial, {"params": 1})
    assert storage.get_trial(trial._trial_id).user_attrs["params"] == 13


def test_a_note_is_one_commit_that_the_dashboard_reads(url):
    storage = open_storage(url, heartbeat=None, read_notes=False)
    trial = _study(storage, "note").ask()
    dashboard_save_note(trial, "from the dashboard")  # version 1
    commits = _commits(storage)
    save_note(trial, "y" * 5000)  # three parts
    assert len(commits) == 1
    save_note(trial, "short")  # the parts of the longer note are gone
    reader = open_storage(url, heartbeat=None, create=False)
    notes = {k: v for k, v in reader.get_study_system_attrs(trial.study._study_id).items() if k.startswith(NOTE_PREFIX)}
    assert get_note_from_system_attrs(notes, trial._trial_id) == {"version": 3, "body": "short"}
    assert len(notes) == 2  # the version and one part
    save_note(trial, "z" * 3000)
    assert get_note(optuna.Trial(optuna.load_study(study_name="note", storage=reader), trial._trial_id)) == "z" * 3000


def _as_read(trial: FrozenTrial) -> str:
    """A trial's content in a comparable form (NaN equals NaN; attribute order ignored)."""
    return repr({k: sorted(v.items()) if isinstance(v, dict) else v for k, v in vars(trial).items()})


def test_trials_read_back_exactly_as_optunas_storage_reads_them(url, local_zone):
    storage = open_storage(url, heartbeat=None)
    study = _study(storage, f"reads-{local_zone}")
    sid = study._study_id

    def objective(t: optuna.Trial) -> tuple[float, float]:
        t.suggest_float("lr", 1e-4, 1e-1, log=True)
        t.suggest_categorical("width", [4, 8, 16])
        t.suggest_categorical("cbam", [True, False])
        t.set_user_attr("curve", [{"epoch": 1, "val_auc": 0.5}])
        n = t.suggest_int("blocks", 1, 3)
        if n == 3:
            raise optuna.TrialPruned()
        return float("inf") if n == 1 else 0.5, float("-inf") if t.number % 2 else 12.0

    study.optimize(objective, n_trials=8, catch=())
    running = study.ask()
    running.suggest_float("lr", 1e-4, 1e-1, log=True)
    storage.set_trial_system_attr(running._trial_id, "note", {"a": [1, 2]})
    for step, value in enumerate([0.1, float("nan"), float("inf"), float("-inf")]):
        storage.set_trial_intermediate_value(running._trial_id, step, value)
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial({"blocks": 2})  # WAITING

    ids = [t._trial_id for t in RDBStorage.get_all_trials(storage, sid, deepcopy=False)]
    assert len(ids) == 11
    for states, included, greater in [
        (None, set(), -1),
        ((optuna.trial.TrialState.COMPLETE,), set(), -1),
        (None, {ids[2], ids[4]}, ids[5]),
        ((optuna.trial.TrialState.WAITING,), set(), ids[3]),
        (None, set(), ids[-1]),
    ]:
        ours = storage._get_trials(sid, states, included, greater)
        optunas = RDBStorage._get_trials(storage, sid, states, included, greater)
        assert [_as_read(t) for t in ours] == [_as_read(t) for t in optunas]
    assert {t.state for t in storage.get_all_trials(sid)} == set(optuna.trial.TrialState)
    # Local wall-clock time, as Optuna hands it out, in whatever zone the process runs.
    started = max(t.datetime_start for t in storage.get_all_trials(sid) if t.datetime_start)
    assert abs((datetime.now() - started).total_seconds()) < 600
    for trial_id in ids:
        assert _as_read(storage.get_trial(trial_id)) == _as_read(RDBStorage.get_trial(storage, trial_id))
    with pytest.raises(KeyError):
        storage.get_trial(ids[-1] + 100)
    with pytest.raises(KeyError):
        storage._get_trials(sid + 100, None, set(), -1)


def test_only_a_lost_table_creation_race_is_retried_when_opening(url):
    """Workers opening a fresh database together race to create its tables and stamp its schema
    version; the loser's error (SQLite: "UNIQUE constraint failed", PostgreSQL: "duplicate key")
    is retried, and nothing else is."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE race_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(sqlalchemy.text("INSERT INTO race_version VALUES ('v1')"))
    with pytest.raises(sqlalchemy.exc.IntegrityError) as lost, engine.begin() as conn:
        conn.execute(sqlalchemy.text("INSERT INTO race_version VALUES ('v1')"))  # the second stamp
    assert lost_creation_race(lost.value)
    with pytest.raises(sqlalchemy.exc.DBAPIError) as other, engine.begin() as conn:
        conn.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
    assert not lost_creation_race(other.value)
    if url.startswith("postgresql"):
        with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
            sqlalchemy.create_engine(sqlalchemy.make_url(url).set(password="wrong")).connect()
        assert not lost_creation_race(refused.value)


def _lose_the_next_commit_reply(storage: RDBStorage) -> None:
    """The next commit lands, and then its caller sees the connection drop, as when a database
    restarts between committing and answering."""

    def lost(conn: sqlalchemy.Connection) -> None:
        sqlalchemy.event.remove(storage.engine, "commit", lost)
        conn.connection.dbapi_connection.commit()
        raise sqlalchemy.exc.OperationalError("COMMIT", None, ConnectionError("server closed the connection"))

    sqlalchemy.event.listen(storage.engine, "commit", lost)


def test_a_creation_whose_reply_was_lost_makes_one_trial_where_optunas_makes_two(url, caplog):
    plain = RDBStorage(url)
    study_id = plain.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "lost-reply")
    _lose_the_next_commit_reply(plain)
    plain.create_new_trial(study_id)  # Optuna retries the create, and the first trial is orphaned
    assert [t.state for t in plain.get_all_trials(study_id)] == [optuna.trial.TrialState.RUNNING] * 2

    ours = open_storage(url, heartbeat=None)
    study_id = ours.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "lost-reply-ours")
    _lose_the_next_commit_reply(ours)
    with caplog.at_level("WARNING", logger="nasopt.storages.rdb"):
        trial_id = ours.create_new_trial(study_id)
    assert "storage: _create_new_trial failed" in caplog.text  # the reply really was lost
    (trial,) = ours.get_all_trials(study_id)
    assert (trial._trial_id, trial.state) == (trial_id, optuna.trial.TrialState.RUNNING)


def test_heartbeat_enabled_says_what_optunas_stale_trial_check_does(tmp_path):
    """nasopt.storages reads Optuna's private ``is_heartbeat_enabled``; it must agree with what
    Optuna's public ``fail_stale_trials`` acts on."""
    from nasopt.storages.url import heartbeat_enabled

    for heartbeat, expected in ((None, False), (1.0, True)):
        storage = open_storage(f"sqlite:///{tmp_path}/hb-{expected}.db", heartbeat=heartbeat)
        study = _study(storage, "hb")
        assert heartbeat_enabled(storage) is expected
        trial = study.ask()
        if expected:  # a trial whose heartbeats stopped is failed by Optuna's own check
            storage.record_heartbeat(trial._trial_id)
            time.sleep(storage.grace_period + 1)
        with quiet_experimental():
            optuna.storages.fail_stale_trials(study)
        assert study.trials[0].state == (optuna.trial.TrialState.FAIL if expected else optuna.trial.TrialState.RUNNING)


def test_quieted_failures_lose_optunas_traceback_and_nothing_else(tmp_path, caplog):
    """nasopt.storages filters Optuna's private logger ``optuna.study._optimize``: the logger that
    a failed trial's traceback really goes to."""
    from nasopt.storages.url import quiet_trial_failures

    class Expected(Exception):
        pass

    def objective(trial: optuna.Trial) -> float:
        raise Expected() if trial.number == 0 else ValueError("unexpected")

    quiet_trial_failures((Expected,))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/q.db")
    with caplog.at_level("WARNING", logger="optuna"):
        study.optimize(objective, n_trials=2, catch=(Expected, ValueError))
    failed = [r for r in caplog.records if r.exc_info]
    assert [type(r.exc_info[1]) for r in failed] == [ValueError]  # Expected's traceback is gone
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
