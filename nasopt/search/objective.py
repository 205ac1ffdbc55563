"""The Optuna objective: trial -> Architecture -> fit -> (objective values) + artifacts.

With a fidelity strategy (:mod:`nasopt.search.pruners.moasha`), the objective also stops dominated trials
early: at each rung it stores the trial's objective values, ranks them against every trial of
the study that reached the same rung, and ends the trial PRUNED when the strategy says so.
Optuna cannot prune multi-objective studies itself, so the rungs live here.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from nasopt.artifacts.checkpoint import CheckpointHeader, save_model
from nasopt.artifacts.record import Key, predictions_json, val_key
from nasopt.config.schema import OBJECTIVES, StudyConfig
from nasopt.data.noduleset import NoduleSet
from nasopt.inference.latency import measure
from nasopt.model import Architecture, build_network, count_flops, count_params
from nasopt.search.constraints import describe, over
from nasopt.search.pruners.moasha import MOASHA, to_minimize
from nasopt.search.space import suggest
from nasopt.storages.writes import deferred_writes, save_note, set_user_attrs
from nasopt.training.fit import FitResult, TrainingDiverged, fit

#: An untrained (over-budget) trial's value for each validation metric (all maximized): the worst there is.
UNTRAINED_METRIC = 0.0
#: The record's keys known before training (see Objective._known), kept by a trial stopped early.
_KNOWN = (Key.PARAMS, Key.FLOPS, Key.LATENCY, Key.LATENCY_32, Key.DEVICE_NAME, Key.LATENCY_SECONDS, Key.PROVENANCE)


@dataclass(frozen=True)
class Presentation:
    """How a trial is shown, handed in by the caller (the worker passes
    :mod:`nasopt.visualization.trial`'s), so that the search imports no drawing."""

    note: Callable[[int, Architecture, dict[str, Any], str | None], str]  # the dashboard note (trial_note)
    figures: Callable[[int, CheckpointHeader, FitResult, NoduleSet, Path], dict[Key, Path]]  # uploaded


class Objective:
    """Callable for ``study.optimize``: trains one candidate per trial on the search split.
    Without a ``presentation`` trials get no note and no figures."""

    def __init__(
        self,
        cfg: StudyConfig,
        train: NoduleSet,
        val: NoduleSet,
        device: torch.device,
        artifacts: FileSystemArtifactStore | None = None,
        on_epoch: Callable[[optuna.Trial, dict[str, float]], None] | None = None,
        fidelity: MOASHA | None = None,
        shield: Callable[[], AbstractContextManager[None]] = nullcontext,
        presentation: Presentation | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.train, self.val, self.device = cfg, train, val, device
        self.artifacts = artifacts
        self.on_epoch = on_epoch
        self.fidelity = fidelity
        # Around each of the objective's storage calls: a worker's signals wait for their end.
        self.shield = shield
        self.presentation = presentation
        self.provenance = provenance  # this worker's (nasopt.search.provenance); each trial adds its seed
        self.directions = [OBJECTIVES[o] for o in cfg.study.objectives]
        self.limits = cfg.constraints.limits()

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        with self.shield():
            arch, hparams = suggest(trial, self.cfg.space)
        known = self._known(arch)
        if self.provenance is not None:
            known[Key.PROVENANCE] = self.provenance | {"seed": self._seed(trial)}
        if over_limits := over(known, self.limits):
            return self._over_budget(trial, arch, known, over_limits)
        try:
            result = self._fit(trial, arch, hparams, known)
        except TrainingDiverged as exc:
            with self.shield():
                trial.set_user_attr(Key.FAIL_REASON, str(exc))  # shown by the dashboard and `search`
            raise
        if Key.LATENCY not in known:  # nothing needed it first: measured once trained, so stopped trials skip it
            known |= self._latency(arch)
        values = {val_key(k): v for k, v in result.metrics.items()} | known
        record = {
            Key.CURVE: result.curve,
            Key.TRAIN_SECONDS: round(result.seconds, 2),
            Key.SAMPLES_PER_S: round(result.train_samples_per_s, 1),
            Key.NORM: list(result.norm),
            Key.DEVICE: str(self.device),
        }
        with self.shield():
            with deferred_writes(trial):  # the record and the artifact ids: one commit
                set_user_attrs(trial, values | record)
                if self.artifacts is not None:
                    self._upload(trial, arch, result)
            self._note(trial, arch, values | record)
        return tuple(float(values[o]) for o in self.cfg.study.objectives)

    def _known(self, arch: Architecture) -> dict[str, Any]:
        """What is known before training: parameters, FLOPs and, when an objective or a budget
        needs it, the measured latency (not for a network already over another budget, unless
        latency is an objective)."""
        known: dict[str, Any] = {
            Key.PARAMS: count_params(build_network(arch)),
            Key.FLOPS: count_flops(arch, self.cfg.train.input_size),
        }
        if Key.LATENCY in self.cfg.study.objectives or (Key.LATENCY in self.limits and not over(known, self.limits)):
            known |= self._latency(arch)
        return known

    def _latency(self, arch: Architecture) -> dict[str, Any]:
        latency = measure(build_network(arch), self.cfg.train.input_size, self.device, self.cfg.train.channels_last)
        return {
            Key.LATENCY: latency.ms[1],
            Key.LATENCY_32: latency.ms[32],
            Key.DEVICE_NAME: latency.device_name,
            Key.LATENCY_SECONDS: round(latency.seconds, 3),
        }

    def _over_budget(
        self, trial: optuna.Trial, arch: Architecture, known: dict[str, Any], over_limits: dict[str, list[float]]
    ) -> tuple[float, ...]:
        """An infeasible trial, not trained: it completes at once with its budgets' values and
        the worst value of each metric objective, so the sampler ranks it and learns from it."""
        record = known | {Key.OVER_BUDGET: over_limits, Key.DEVICE: str(self.device)}
        with self.shield():
            set_user_attrs(trial, record)
            self._note(trial, arch, record, stopped=f"not trained: {describe(over_limits)}")
        return tuple(float(known.get(o, UNTRAINED_METRIC)) for o in self.cfg.study.objectives)

    def _fit(self, trial: optuna.Trial, arch: Architecture, hparams: dict, known: dict[str, Any]) -> FitResult:
        curve: list[dict[str, float]] = []
        t0 = time.perf_counter()

        def on_epoch(record: dict[str, float]) -> None:
            curve.append(record)
            with self.shield():  # also where a signal lost inside training is raised at last
                if self.on_epoch is not None:
                    self.on_epoch(trial, record)
                if self.fidelity is not None and self.fidelity.is_rung(int(record["epoch"])):
                    self._rung(trial, arch, {**record, **known}, curve, time.perf_counter() - t0)

        return fit(
            arch,
            self.train,
            self.val,
            self.cfg.train,
            lr=hparams["lr"],
            batch_size=hparams["batch_size"],
            seed=self._seed(trial),
            device=self.device,
            on_epoch=on_epoch,
        )

    def _seed(self, trial: optuna.Trial) -> int:
        return self.cfg.study.seed + trial.number

    def _rung(
        self, trial: optuna.Trial, arch: Architecture, values: dict, curve: list[dict[str, float]], seconds: float
    ) -> None:
        """Record this rung's objective values; stop the trial (PRUNED) when the strategy says so."""
        assert self.fidelity is not None
        epoch = str(int(values["epoch"]))
        mine = [float(values[o]) for o in self.cfg.study.objectives]
        rungs = {**trial.user_attrs.get(Key.RUNGS, {}), epoch: mine}
        trial.set_user_attr(Key.RUNGS, rungs)
        # Every trial of the study that reached this rung, in any state: ranks come from the
        # study's current state, so any number of asynchronous workers share one ranking.
        others = [
            t.user_attrs[Key.RUNGS][epoch]
            for t in trial.study.get_trials(deepcopy=False)
            if t.number != trial.number and epoch in t.user_attrs.get(Key.RUNGS, {})
        ]
        decision = self.fidelity.decide(
            to_minimize(mine, self.directions), [to_minimize(o, self.directions) for o in others]
        )
        if decision.keep_going:
            return
        known = {k: v for k, v in values.items() if k in _KNOWN}
        record = known | {
            Key.STOPPED_AT: int(epoch),
            Key.STOP_REASON: decision.reason,
            Key.CURVE: curve,
            Key.TRAIN_SECONDS: round(seconds, 2),
        }
        set_user_attrs(trial, record)
        metrics = {k: v for k, v in values.items() if k.startswith("val_")}
        self._note(
            trial, arch, record | metrics | {Key.DEVICE: str(self.device)},
            stopped=f"epoch {epoch} of {self.cfg.train.epochs}, MO-ASHA: {decision.reason}",
        )  # fmt: skip
        raise optuna.TrialPruned(decision.reason)

    def _upload(self, trial: optuna.Trial, arch: Architecture, result: FitResult) -> None:
        header = CheckpointHeader(
            arch=arch.to_dict(),
            norm=result.norm,
            input_size=self.cfg.train.input_size,
            metrics=result.metrics,
            study=trial.study.study_name,
            trial=trial.number,
        )
        with tempfile.TemporaryDirectory() as tmp:
            stem = Path(tmp) / f"trial-{trial.number}"
            files = {
                Key.WEIGHTS: save_model(f"{stem}.safetensors", result.state_dict, header),
                Key.VAL_PREDICTIONS: Path(f"{stem}-val-predictions.json"),
            }
            files[Key.VAL_PREDICTIONS].write_text(
                predictions_json([m["nodule"] for m in self.val.meta], self.val.labels, result.val_prob)
            )
            if self.presentation is not None:
                files.update(self.presentation.figures(trial.number, header, result, self.val, stem))
            ids = {
                key: upload_artifact(artifact_store=self.artifacts, file_path=str(path), study_or_trial=trial)
                for key, path in files.items()
            }
            set_user_attrs(trial, ids)

    def _note(
        self, trial: optuna.Trial, arch: Architecture, record: dict[str, Any], stopped: str | None = None
    ) -> None:
        if self.presentation is not None:
            save_note(trial, self.presentation.note(trial.number, arch, record, stopped))
