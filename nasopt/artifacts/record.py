"""The trial record: every user attribute and artifact a trial carries, named in one place.

The objective writes these keys; the worker's progress lines, the Pareto table and export read
them. Keep values small: optuna-dashboard loads every trial's attributes into its trial list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nasopt.errors import ConfigError, DataError
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
    LATENCY = "latency_ms"  # median ms per batch-1 inference on DEVICE_NAME (an objective and a constraint)
    LATENCY_32 = "latency_ms_batch32"  # median ms per batch of 32
    LATENCY_SECONDS = "latency_seconds"  # what measuring both cost the trial
    DEVICE_NAME = "device_name"  # the worker's device in words, e.g. "NVIDIA H100 80GB HBM3"
    PROVENANCE = "provenance"  # code, library versions, device, settings, seed, data and split it ran with
    OVER_BUDGET = "over_budget"  # {constraint: [value, limit]} of a network not trained for it
    FAIL_REASON = "fail_reason"  # why a FAIL trial failed ("stopped": SIGTERM, retried)
    WORKER = "worker"  # {"host", "pid", "index"} of the worker that ran it
    RUNGS = "rungs"  # {epoch: the study's objective values at that epoch} at each early-stopping rung reached
    STOPPED_AT = "stopped_at_epoch"  # a PRUNED trial: the rung where the fidelity strategy stopped it
    STOP_REASON = "stop_reason"  # a PRUNED trial: why it stopped (its rank at that rung)
    WEIGHTS = "artifact_weights"  # artifact id of the safetensors checkpoint
    VAL_PREDICTIONS = "artifact_val_predictions"  # artifact id of the validation predictions JSON
    CURVE_PNG = "artifact_curve_png"  # artifact id of the learning-curve figure
    ATTENTION_PNG = "artifact_attention_png"  # artifact id of the CBAM attention figure
    WARM_START = "warm_start"  # the name of the known network a queued trial was enqueued as


def val_key(metric: str) -> str:
    """The user attribute of a validation metric (``accuracy`` -> ``val_accuracy``)."""
    return f"val_{metric}"


def trained(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials that trained a network: an over-budget one completes untrained."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if Key.OVER_BUDGET not in t.user_attrs
    ]


def trained_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` of ``study``, when it trained a network; else one line naming the trials that did."""
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        state = "does not exist"
    elif found[0].state != TrialState.COMPLETE:
        state = f"is {found[0].state.name.lower()}, not complete"
    elif Key.OVER_BUDGET in found[0].user_attrs:
        state = "was over its [constraints] budget and never trained"
    else:
        return found[0]
    listed = number_ranges([t.number for t in trained(study)]) or "none"
    raise ConfigError(
        f"--trial {number}: trial {number} of study {study.study_name!r} {state}; trained trials: {listed}"
    )


def number_ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``: runs of three or more as ranges."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def front(study: optuna.Study, device_name: str | None = None) -> list[FrozenTrial]:
    """The Pareto front of the feasible trials (Optuna's ``best_trials``), or of those that ran on
    ``device_name``: latencies measured on different devices cannot be compared."""
    if device_name is None:
        return study.best_trials
    mine = [t for t in trained(study) if t.user_attrs.get(Key.DEVICE_NAME) == device_name]
    subset = optuna.create_study(directions=study.directions)  # in memory: Optuna's own front of the subset
    subset.add_trials(mine)  # numbered 0, 1, ... in this order
    return [mine[t.number] for t in subset.best_trials]


def device_names(study: optuna.Study) -> dict[str, int]:
    """How many trained trials each device ran; latencies exist per device."""
    counts: dict[str, int] = {}
    for t in trained(study):
        name = t.user_attrs.get(Key.DEVICE_NAME)
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return counts


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
