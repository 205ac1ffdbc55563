"""The trial record: every user attribute and artifact a trial carries, named in one place.

The objective writes these keys; the worker's progress lines, the Pareto table and export read
them. Keep values small: optuna-dashboard loads every trial's attributes into its trial list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial
from optuna_dashboard import save_note as dashboard_save_note

from nasopt.errors import DataError
from nasopt.model.architecture import Architecture


class Key(StrEnum):
    """User-attribute keys of a trial. Validation metrics are ``val_<metric>`` (see :func:`val_key`)."""

    ARCH = "arch"  # Architecture.to_dict()
    ARCH_SUMMARY = "arch_summary"  # Architecture.summary()
    PARAMS = "params"  # trainable parameters
    FLOPS = "flops"  # forward FLOPs of one sample (when an objective)
    CURVE = "curve"  # one record per epoch
    TRAIN_SECONDS = "train_seconds"
    SAMPLES_PER_S = "train_samples_per_s"
    NORM = "norm"  # (mean, std) of the training HU the network was normalised with
    DEVICE = "device"
    FAIL_REASON = "fail_reason"  # why a FAIL trial failed ("stopped": SIGTERM, retried)
    WORKER = "worker"  # {"host", "pid", "index"} of the worker that ran it
    RUNGS = "rungs"  # {epoch: the study's objective values at that epoch} at each early-stopping rung reached
    STOPPED_AT = "stopped_at_epoch"  # a PRUNED trial: the rung where the fidelity strategy stopped it
    STOP_REASON = "stop_reason"  # a PRUNED trial: why it stopped (its rank at that rung)
    WEIGHTS = "artifact_weights"  # artifact id of the safetensors checkpoint
    VAL_PREDICTIONS = "artifact_val_predictions"  # artifact id of the validation predictions JSON
    CURVE_PNG = "artifact_curve_png"  # artifact id of the learning-curve figure
    ATTENTION_PNG = "artifact_attention_png"  # artifact id of the CBAM attention figure


def val_key(metric: str) -> str:
    """The user attribute of a validation metric (``accuracy`` -> ``val_accuracy``)."""
    return f"val_{metric}"


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


@dataclass(frozen=True)
class TrialRecord:
    """What export and the reports need of one complete trial, read from its user attributes."""

    number: int
    arch: Architecture
    metrics: dict[str, float]  # validation metrics, without the ``val_`` prefix
    params: int
    norm: tuple[float, float]
    hparams: dict[str, Any]  # the trial's training settings (lr, batch_size)
    weights_id: str | None
    predictions_id: str | None

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        a = trial.user_attrs
        try:
            return cls(
                number=trial.number,
                arch=Architecture.from_dict(a[Key.ARCH]),
                metrics={k.removeprefix("val_"): float(v) for k, v in a.items() if k.startswith("val_")},
                params=int(a[Key.PARAMS]),
                norm=(float(a[Key.NORM][0]), float(a[Key.NORM][1])),
                hparams={k: trial.params[k] for k in ("lr", "batch_size") if k in trial.params},
                weights_id=a.get(Key.WEIGHTS),
                predictions_id=a.get(Key.VAL_PREDICTIONS),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"trial {trial.number}: incomplete nasopt trial record (missing {exc})") from None


# The validation-predictions artifact: one JSON object of three equally long lists.
def predictions_json(nodules: list[str], labels: np.ndarray, prob: np.ndarray) -> str:
    """Probabilities are written as float32 values exactly, so a reloaded network reproduces them bit for bit."""
    return json.dumps(
        {
            "nodule": list(nodules),
            "label": np.asarray(labels).astype(int).tolist(),
            "prob_malignant": np.asarray(prob, dtype=np.float32).astype(float).tolist(),
        }
    )


def read_predictions(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(nodules, labels, float32 probabilities) of a validation-predictions artifact."""
    try:
        d = json.loads(Path(path).read_text())
        return list(d["nodule"]), np.asarray(d["label"], dtype=np.int64), np.asarray(d["prob_malignant"], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a nasopt validation-predictions file ({exc})") from None
