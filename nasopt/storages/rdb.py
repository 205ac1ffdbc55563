"""nasopt's RDB storage: Optuna's, surviving database restarts, with fewer commits.

Calls that are safe to repeat are retried on transient database errors, and trial creation is
reconciled (a restart costs a worker a pause). Workers read study system attributes without
optuna-dashboard's notes (``read_notes=False``). A running trial's writes can be queued and
committed as one transaction (:meth:`ResilientRDBStorage.deferred`), and a trial's note is one
transaction. Trials are read by Optuna's own reader.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy
import tenacity
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
)
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard._note import note_str_key_prefix, note_ver_key, split_body

#: optuna-dashboard keeps each note as study system attributes under this prefix.
NOTE_PREFIX = "dashboard:"
#: A transient database error is retried with jittered backoff for at most this long. It stays
#: below the 30 s a stopped worker is given before it is killed (Kubernetes'
#: terminationGracePeriodSeconds, compose's stop_grace_period, Slurm's default KillWait), so a
#: worker stopped during an outage still has time to record its trial as stopped.
RETRY_SECONDS = 20.0
#: The system attribute that marks a new trial with a one-off token, to find it again after a
#: creation whose commit landed but whose reply was lost.
CREATION_KEY = "nasopt:creation"
#: The system attribute that marks which worker's claim made a queued trial RUNNING.
CLAIM_KEY = "nasopt:claim"

log = logging.getLogger(__name__)
_TRIALS = models.TrialModel.__table__
_SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__


def _transient(exc: BaseException) -> bool:
    """A lost connection or a restarting server, as opposed to a bad statement."""
    cause = exc.__cause__ if isinstance(exc, StorageInternalError) else exc
    return isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or (
        isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated
    )


def _retrying(name: str) -> tenacity.Retrying:
    """The one retry policy for call ``name``: transient errors only, jittered so that many
    workers do not reconnect in lockstep after a restart, for at most RETRY_SECONDS; each
    retry says so in one line."""

    def say(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        reason = str(getattr(error, "__cause__", None) or error).splitlines()[0]
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("storage: %s failed (%s); retry %d in %.1f s", name, reason, state.attempt_number, wait)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(_transient),
        stop=tenacity.stop_after_delay(RETRY_SECONDS),
        wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.5),
        before_sleep=say,
        reraise=True,
    )


def _retried(method: Callable[..., Any], landed: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """``method`` retried on transient errors. A call that is not idempotent names ``landed``:
    before each retry it reads whether the failed try committed after all (a reply lost with the
    connection) and returns what the call would have, or ``None`` to try again."""

    @functools.wraps(method)
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        for attempt in _retrying(method.__name__):
            with attempt:
                if landed is not None and attempt.retry_state.attempt_number > 1:
                    if (done := landed(self, *args, **kwargs)) is not None:
                        return done
                return method(self, *args, **kwargs)
        raise AssertionError("unreachable: tenacity returns or raises")

    return call


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDB storage whose calls survive a database restart: pre-pinged connections, and
    calls retried with backoff on transient errors for up to ``RETRY_SECONDS``.

    Only calls that are safe to repeat are retried (see ``_RETRIED``): reads, heartbeats and
    writes that overwrite. The calls that add rows are first reconciled with what the failed
    try left: a new trial and a claim of a queued trial by their tokens, a state change or a
    parameter by reading the trial back. The rest (creating or deleting a study) fail at once.

    With ``read_notes=False`` (workers), study system attributes read back without
    optuna-dashboard's notes; see :func:`nasopt.storages.url.open_storage`. A running trial's
    writes can be committed together (:meth:`deferred`).
    """

    def __init__(self, url: str, read_notes: bool = True, **kwargs: Any) -> None:
        self.read_notes = read_notes
        self._queued: dict[int, _Writes] = {}  # trial id -> writes waiting for the end of deferred()
        super().__init__(url, **kwargs)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        if self.read_notes:
            return super().get_study_system_attrs(study_id)
        table = models.StudySystemAttributeModel.__table__
        query = sqlalchemy.select(table.c.key, table.c.value_json).where(
            table.c.study_id == study_id, sqlalchemy.not_(table.c.key.startswith(NOTE_PREFIX, autoescape=True))
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            self.get_study_name_from_id(study_id)  # a missing study raises KeyError, as Optuna's does
        return {key: json.loads(value) for key, value in rows}

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Optuna's trial creation, reconciled on retry. Optuna's own creation retries inside
        itself, and after a lost reply it makes a second trial that nobody runs. Here the new
        trial carries a one-off token, and a retry first looks for a trial holding it."""
        template = copy.copy(template_trial) if template_trial is not None else _running_template()
        template.system_attrs = {**template.system_attrs, CREATION_KEY: uuid.uuid4().hex}
        return self._create(study_id, template)

    def _create(self, study_id: int, template: FrozenTrial) -> FrozenTrial:
        """One try at creating ``template``'s trial (retried; reconciled by :func:`_created`)."""
        with _create_scoped_session(self.scoped_session) as session:
            # Locking the study row orders concurrent creations' numbers, as Optuna does.
            models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
            trial = self._get_prepared_new_trial(study_id, template, session)
            made = copy.deepcopy(template)
            made.number, made.datetime_start = trial.number, trial.datetime_start
            made._trial_id = trial.trial_id
        return made

    _set_state = RDBStorage.set_trial_state_values  # retried below, reconciled by _state_landed

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """Optuna's, but a claim of a queued trial (WAITING to RUNNING) is one conditional UPDATE
        plus a one-off claim token, so that exactly one worker wins it. Optuna's reads the state
        and then writes it, and on SQLite, whose driver starts the transaction only at the write,
        two workers both read WAITING and both trained the trial. A claim whose reply was lost is
        reconciled by its token: this worker's claim, another's, or none yet."""
        if state != TrialState.RUNNING:
            return self._set_state(trial_id, state, values)
        won = self._claim(trial_id, uuid.uuid4().hex)
        if not won and RDBStorage.get_trial(self, trial_id).state.is_finished():
            raise UpdateFinishedTrialError(f"trial {trial_id} is already finished")  # as Optuna's claim
        return won

    def _claim(self, trial_id: int, token: str) -> bool:
        """One try at claiming a queued trial (retried; reconciled by :func:`_claimed`)."""
        started = datetime.now(UTC).replace(tzinfo=None)  # the column holds naive UTC, as Optuna's
        with self.engine.begin() as conn:
            won = conn.execute(
                sqlalchemy.update(_TRIALS)
                .where(_TRIALS.c.trial_id == trial_id, _TRIALS.c.state == TrialState.WAITING)
                .values(state=TrialState.RUNNING, datetime_start=started)
            ).rowcount == 1  # fmt: skip
            if won:
                conn.execute(sqlalchemy.insert(_SYSTEM_ATTRS).values(
                    trial_id=trial_id, key=CLAIM_KEY, value_json=json.dumps(token)
                ))  # fmt: skip
        return won

    @contextmanager
    def deferred(self, trial_id: int) -> Iterator[None]:
        """Queue this running trial's parameter, user- and system-attribute writes, and commit
        them together on leaving (also when the block raises). Optuna commits each write alone,
        and every commit costs the database a disk flush: a trial's 21 genes were 21 commits.

        A parameter is queued only when Optuna's cache layer knows its distribution from an
        earlier trial (checked at once, as Optuna checks it); the study's first sight of a
        parameter is written at once, Optuna's way, which checks it against the database.
        """
        if trial_id in self._queued:  # nested: the outer block commits
            yield
            return
        queue = self._queued[trial_id] = _Writes()
        try:
            yield
        finally:
            del self._queued[trial_id]
            if queue:
                self._write(trial_id, queue)

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
        previous_distribution: BaseDistribution | None,
    ) -> None:
        queue = self._queued.get(trial_id)
        if queue is None or previous_distribution is None:
            return super()._set_trial_param(
                trial_id, param_name, param_value_internal, distribution, previous_distribution
            )
        check_distribution_compatibility(previous_distribution, distribution)
        queue.params[param_name] = (param_value_internal, distribution_to_json(distribution))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        queue = self._queued.get(trial_id)
        if queue is None:
            return super().set_trial_system_attr(trial_id, key, value)
        queue.system[key] = value

    def set_trial_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Several user attributes of a running trial in one transaction (Optuna commits each
        alone); see :func:`nasopt.storages.writes.set_user_attrs`."""
        queue = self._queued.get(trial_id)
        if queue is not None:
            queue.user.update(attrs)
        elif attrs:
            self._write(trial_id, _Writes(user=dict(attrs)))

    def save_trial_note(self, study_id: int, trial_id: int, body: str) -> None:
        """optuna-dashboard's note of a trial, as its ``save_note`` stores it (a version and the
        body in parts, as study system attributes), in one transaction that reads only this note's
        keys; see :func:`nasopt.storages.writes.save_note`."""
        table = models.StudySystemAttributeModel.__table__
        version_key = note_ver_key(trial_id)
        mine = sqlalchemy.and_(
            table.c.study_id == study_id,
            sqlalchemy.or_(
                table.c.key == version_key,
                table.c.key.startswith(note_str_key_prefix(trial_id), autoescape=True),
            ),
        )
        with self.engine.begin() as conn:
            version = conn.execute(
                sqlalchemy.select(table.c.value_json).where(table.c.study_id == study_id, table.c.key == version_key)
            ).scalar()
            attrs = {version_key: (json.loads(version) if version else 0) + 1} | split_body(body, trial_id)
            conn.execute(sqlalchemy.delete(table).where(mine))  # with a shorter body, no stale parts remain
            conn.execute(
                sqlalchemy.insert(table),
                [{"study_id": study_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()],
            )

    def _write(self, trial_id: int, writes: _Writes) -> None:
        """One transaction: the trial's state check, then per table a delete of the keys written
        and one bulk insert. Any database; repeating it after a lost commit changes nothing."""
        tables = [
            (models.TrialParamModel.__table__, "param_name", {
                k: {"param_value": v, "distribution_json": d} for k, (v, d) in writes.params.items()
            }),
            (models.TrialUserAttributeModel.__table__, "key", {
                k: {"value_json": json.dumps(v)} for k, v in writes.user.items()
            }),
            (models.TrialSystemAttributeModel.__table__, "key", {
                k: {"value_json": json.dumps(v)} for k, v in writes.system.items()
            }),
        ]  # fmt: skip
        with _create_scoped_session(self.scoped_session, True) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            self.check_trial_is_updatable(trial_id, trial.state)
            for table, name, rows in tables:
                if rows:
                    session.execute(
                        sqlalchemy.delete(table).where(table.c.trial_id == trial_id, table.c[name].in_(rows))
                    )
                    session.execute(
                        sqlalchemy.insert(table), [{"trial_id": trial_id, name: k} | r for k, r in rows.items()]
                    )


@dataclass
class _Writes:
    """A running trial's queued writes (see :meth:`ResilientRDBStorage.deferred`)."""

    params: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (internal value, distribution JSON)
    user: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.params or self.user or self.system)


def _running_template() -> FrozenTrial:
    """What Optuna creates without a template: a running trial started now."""
    return FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, values=None, datetime_start=datetime.now(),
        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
        intermediate_values={}, trial_id=-1,
    )  # fmt: skip


def _state_landed(
    storage: ResilientRDBStorage, trial_id: int, state: TrialState, values: Sequence[float] | None = None
) -> bool | None:
    """Whether a failed state change (to a finished state) is in the database after all."""
    trial = RDBStorage.get_trial(storage, trial_id)  # not retried: inside a retry
    return True if trial.state == state and (values is None or trial.values == list(values)) else None


def _created(storage: ResilientRDBStorage, study_id: int, template: FrozenTrial) -> FrozenTrial | None:
    """The trial a failed creation made after all, found by its token; ``None`` if none."""
    token = json.dumps(template.system_attrs[CREATION_KEY])
    query = sqlalchemy.select(_SYSTEM_ATTRS.c.trial_id).where(
        _SYSTEM_ATTRS.c.key == CREATION_KEY, _SYSTEM_ATTRS.c.value_json == token
    )
    with storage.engine.connect() as conn:
        trial_id = conn.execute(query).scalar()
    return None if trial_id is None else RDBStorage.get_trial(storage, trial_id)  # not retried: inside a retry


def _claimed(storage: ResilientRDBStorage, trial_id: int, token: str) -> bool | None:
    """Whether the claim that made the trial RUNNING is this one (``token``) or another's;
    ``None`` while no claim has landed."""
    query = sqlalchemy.select(_SYSTEM_ATTRS.c.value_json).where(
        _SYSTEM_ATTRS.c.trial_id == trial_id, _SYSTEM_ATTRS.c.key == CLAIM_KEY
    )
    with storage.engine.connect() as conn:
        found = conn.execute(query).scalar()
    return None if found is None else json.loads(found) == token


def _param_landed(storage: ResilientRDBStorage, trial_id: int, name: str, internal: float, *_: Any) -> bool | None:
    """Whether a failed parameter write is in the database after all (a second insert is refused)."""
    params = models.TrialParamModel.__table__
    stored = sqlalchemy.select(params.c.param_value).where(params.c.trial_id == trial_id, params.c.param_name == name)
    with storage.engine.connect() as conn:
        return True if conn.execute(stored).scalar() == internal else None


#: The calls retried, and for those that add rows, how a retry reads whether the failed try
#: landed. Reads and heartbeats repeat freely; attribute, intermediate-value and note writes
#: overwrite. Study creation and
#: deletion, and schema upgrades, are not retried: a person runs them and sees the error.
_RETRIED: dict[str, Callable[..., Any] | None] = {
    name: None
    for name in (
        "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
        "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
        "get_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "_get_trials",
        "get_best_trial", "_get_best_trial_id", "_get_stale_trial_ids", "record_heartbeat",
        "set_study_user_attr", "set_study_system_attr", "set_trial_user_attr", "set_trial_system_attr",
        "set_trial_intermediate_value", "save_trial_note", "_write",
    )
} | {
    "_create": _created, "_claim": _claimed, "_set_state": _state_landed, "_set_trial_param": _param_landed,
}  # fmt: skip
for _name, _landed in _RETRIED.items():
    setattr(ResilientRDBStorage, _name, _retried(getattr(ResilientRDBStorage, _name), _landed))
