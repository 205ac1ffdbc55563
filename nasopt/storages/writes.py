"""A running trial's writes in as few commits as the storage allows: the record in one
transaction, the dashboard note in another (nasopt's RDB storage), else one write at a time."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import optuna
from optuna_dashboard import save_note as dashboard_save_note


def _batching(trial: optuna.Trial) -> Any:
    """nasopt's ResilientRDBStorage behind Optuna's cache layer (which sits in front of every RDB
    storage), or ``None`` for storages that commit each write alone (journal, gRPC proxy)."""
    backend = getattr(trial.storage, "_backend", trial.storage)
    return backend if hasattr(backend, "deferred") else None


def deferred_writes(trial: optuna.Trial) -> AbstractContextManager[None]:
    """A block whose writes to ``trial`` (parameters, user attributes, artifact records) commit
    together when it ends: one database transaction instead of one per write, each of which
    costs the database a disk flush. Elsewhere, each write commits as it is made."""
    backend = _batching(trial)
    return backend.deferred(trial._trial_id) if backend else nullcontext()


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Write several user attributes of a running trial: in one transaction on a database
    storage, else one by one."""
    backend = _batching(trial)
    if backend is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    backend.set_trial_user_attrs(trial._trial_id, attrs)
    # The trial's own copy, updated as Trial.set_user_attr updates it (tests/test_storage.py
    # holds both to Optuna's behaviour).
    trial._cached_frozen_trial.user_attrs.update(attrs)


def save_note(trial: optuna.Trial, body: str) -> None:
    """optuna-dashboard's ``save_note`` for a trial, in one transaction on a database storage.

    The dashboard's own call reads every study system attribute twice (all notes of the study)
    and commits each part of the note alone.
    """
    backend = _batching(trial)
    if backend is None:
        dashboard_save_note(trial, body)
    else:
        backend.save_trial_note(trial.study._study_id, trial._trial_id, body)
