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

from nasopt.storages.rdb import CLAIM_KEY, NOTE_PREFIX, ResilientRDBStorage
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


def test_a_worker_writes_notes_that_the_dashboard_reads_but_does_not_read_them_back(url, local_zone):
    worker = open_storage(url, heartbeat=None, read_notes=False)
    study = _study(worker, f"notes-{local_zone}")
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
    read = optuna.load_study(study_name=f"notes-{local_zone}", storage=reader)
    for t in read.trials:
        assert get_note(optuna.Trial(read, t._trial_id)) == f"## Trial {t.number}\n{long}"
    with pytest.raises(KeyError):
        worker.get_study_system_attrs(study._study_id + 1000)


def _commits(storage) -> list[int]:
    """The commits of transactions that wrote (each costs the database a disk flush); Optuna's
    reads commit too, with nothing to flush."""
    commits: list[int] = []
    wrote = []

    def statement(conn, cursor, sql: str, *_) -> None:
        if sql.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            wrote.append(1)

    def commit(conn) -> None:
        if wrote:
            commits.append(1)
            wrote.clear()

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", statement)
    sqlalchemy.event.listen(storage.engine, "commit", commit)
    return commits


def test_a_trials_record_is_one_commit(url):
    storage = open_storage(url, heartbeat=None)
    study = _study(storage, "record")
    trial = study.ask()
    commits = _commits(storage)
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


def test_a_deferred_block_is_one_commit_with_optunas_checks(url, tmp_path, local_zone):
    storage = open_storage(url, heartbeat=None)
    study = _study(storage, f"deferred-{local_zone}")
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


def test_a_note_is_one_commit_that_the_dashboard_reads(url, local_zone):
    storage = open_storage(url, heartbeat=None, read_notes=False)
    trial = _study(storage, f"note-{local_zone}").ask()
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
    read = optuna.load_study(study_name=f"note-{local_zone}", storage=reader)
    assert get_note(optuna.Trial(read, trial._trial_id)) == "z" * 3000


def _as_read(trial: FrozenTrial) -> str:
    """A trial's content in a comparable form (NaN equals NaN; attribute order ignored)."""
    return repr({k: sorted(v.items()) if isinstance(v, dict) else v for k, v in vars(trial).items()})


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


def test_a_creation_whose_reply_was_lost_makes_one_trial_where_optunas_makes_two(url, caplog, local_zone):
    plain = RDBStorage(url)
    study_id = plain.create_new_study([optuna.study.StudyDirection.MAXIMIZE], f"lost-reply-{local_zone}")
    _lose_the_next_commit_reply(plain)
    plain.create_new_trial(study_id)  # Optuna retries the create, and the first trial is orphaned
    assert [t.state for t in plain.get_all_trials(study_id)] == [optuna.trial.TrialState.RUNNING] * 2

    ours = open_storage(url, heartbeat=None)
    study_id = ours.create_new_study([optuna.study.StudyDirection.MAXIMIZE], f"lost-reply-ours-{local_zone}")
    _lose_the_next_commit_reply(ours)
    with caplog.at_level("WARNING", logger="nasopt.storages.rdb"):
        trial_id = ours.create_new_trial(study_id)
    assert "storage: _create failed" in caplog.text  # the reply really was lost
    (trial,) = ours.get_all_trials(study_id)
    assert (trial._trial_id, trial.state) == (trial_id, optuna.trial.TrialState.RUNNING)
    assert _as_read(trial) == _as_read(RDBStorage.get_trial(ours, trial_id))  # found again as Optuna reads it


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


def test_a_state_change_or_parameter_whose_reply_was_lost_is_found_landed_where_optuna_raises(url, local_zone):
    """The two writes that add rows are retried only after reading whether the failed try landed:
    Optuna's storage, which does not retry them, raises; nasopt's reports the write done."""
    distribution = FloatDistribution(0, 1)
    for storage in (RDBStorage(url), open_storage(url, heartbeat=None)):
        name = f"landed-{type(storage).__name__}-{local_zone}"
        study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name)
        trial_id = storage.create_new_trial(study_id)
        writes = [
            ("set_trial_param", (trial_id, "x", 0.25, distribution)),
            ("set_trial_state_values", (trial_id, optuna.trial.TrialState.COMPLETE, [0.5])),
        ]
        for method, args in writes:
            _lose_the_next_commit_reply(storage)
            if isinstance(storage, ResilientRDBStorage):
                getattr(storage, method)(*args)
            else:
                with pytest.raises(optuna.exceptions.StorageInternalError):
                    getattr(storage, method)(*args)
        trial = RDBStorage.get_trial(storage, trial_id)
        assert (trial.params, trial.state, trial.values) == ({"x": 0.25}, optuna.trial.TrialState.COMPLETE, [0.5])


def _waiting_trial(storage, name: str) -> int:
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name)
    queued = FrozenTrial(
        number=-1, state=optuna.trial.TrialState.WAITING, value=None, values=None, datetime_start=None,
        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
        intermediate_values={}, trial_id=-1,
    )  # fmt: skip
    return storage.create_new_trial(study_id, template_trial=queued)


def test_a_queued_trial_is_claimed_by_exactly_one_worker_even_when_the_reply_is_lost(url, local_zone):
    plain = RDBStorage(url)
    trial_id = _waiting_trial(plain, f"claim-optuna-{local_zone}")
    _lose_the_next_commit_reply(plain)
    with pytest.raises(optuna.exceptions.StorageInternalError):  # Optuna's claim: the worker cannot tell
        plain.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)

    ours, other = open_storage(url, heartbeat=None), open_storage(url, heartbeat=None)
    trial_id = _waiting_trial(ours, f"claim-ours-{local_zone}")
    _lose_the_next_commit_reply(ours)
    assert ours.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)  # found by its token
    assert not other.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)  # taken
    claimed = RDBStorage.get_trial(ours, trial_id)
    assert claimed.state == optuna.trial.TrialState.RUNNING and CLAIM_KEY in claimed.system_attrs
    started = claimed.datetime_start  # as Optuna hands it out: local wall-clock time
    assert abs((datetime.now() - started).total_seconds()) < 600
    ours.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, [1.0])
    with pytest.raises(UpdateFinishedTrialError):  # as Optuna's claim of a finished trial
        other.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)
