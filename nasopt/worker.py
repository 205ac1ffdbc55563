"""The worker loop: load the data and the study, then ask-train-tell until a budget runs out.

Any number of workers, on any hosts, may run this loop against one storage: Optuna's RDB
storage hands each trial to one worker, and the study-wide budget counts complete trials of
every worker.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import optuna
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import Progress

from nasopt.config import StudyConfig
from nasopt.data.prepare import load_data
from nasopt.data.splits import study_sets
from nasopt.objective import Objective
from nasopt.study import completed_count, create_or_load, make_sampler, open_artifact_store, open_storage
from nasopt.train import TrainingDiverged, resolve_device
from nasopt.trial_record import Key, val_key


@dataclass
class Budget:
    n_trials: int | None = None  # trials this process runs
    max_trials: int | None = None  # complete trials in the whole study
    timeout: float | None = None  # seconds this process runs


class _NoTracebackForExpectedFailures(logging.Filter):
    """A diverged or interrupted trial gets nasopt's own one-line report, not Optuna's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, (TrainingDiverged, KeyboardInterrupt))


logging.getLogger("optuna.study._optimize").addFilter(_NoTracebackForExpectedFailures())


def _report(console: Console):
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            a = trial.user_attrs
            console.print(
                f"trial {trial.number:>3}  val acc {a[val_key('accuracy')]:.3f}  AUC {a[val_key('auc')]:.3f}  "
                f"params {a[Key.PARAMS]:>10,}  {a[Key.TRAIN_SECONDS]:6.1f} s  {a[Key.ARCH_SUMMARY]}"
            )
        elif trial.state == TrialState.FAIL:
            console.print(
                f"trial {trial.number:>3}  failed: {trial.user_attrs.get(Key.FAIL_REASON, 'see the log above')}"
            )

    return callback


def run_search(
    study_name: str,
    cfg: StudyConfig,
    storage_url: str | None,
    budget: Budget,
    sampler_name: str | None = None,
    device: str = "auto",
    seed: int | None = None,
    threads: int | None = None,
    console: Console | None = None,
) -> optuna.Study:
    """Create or resume ``study_name`` and run trials until the budget is spent."""
    console = console or Console()
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    storage = open_storage(storage_url)
    sampler = make_sampler(sampler_name or cfg.study.sampler, cfg, seed)

    # Data and splits before the study: bad data must not leave a study behind.
    ns = load_data(cfg.data, progress=True)
    train, val, _ = study_sets(cfg, ns)
    study = create_or_load(study_name, cfg, storage, sampler)
    # torch imports torch._dynamo (~2 s, 800 modules) the first time an optimizer is built. Pay
    # it here, after bad input has had its chance to fail fast and before the ready line: its
    # time stays out of trial 0's, and a Ctrl-C during training cannot land in that import,
    # where CPython may swallow it or end the process with SIGINT status instead of 130.
    importlib.import_module("torch._dynamo")
    console.print(
        f"study {study_name!r}: {len(ns)} {ns.source} nodules; search trains on {len(train)}, "
        f"validates on {len(val)} (fold {cfg.split.val_fold}); test fold {cfg.split.test_fold} held out"
    )

    callbacks = [_report(console)]
    if budget.max_trials is not None:
        if completed_count(study) >= budget.max_trials:
            console.print(f"study already has {completed_count(study)} complete trials (budget {budget.max_trials})")
            return study
        callbacks.append(MaxTrialsCallback(budget.max_trials, states=(TrialState.COMPLETE,)))

    artifacts = open_artifact_store(storage.url)
    epochs = cfg.train.epochs
    with Progress(*Progress.get_default_columns(), console=console, transient=True) as bar:
        task = bar.add_task("trial", total=epochs)

        def on_epoch(trial: optuna.Trial, record: dict[str, float]) -> None:
            done = int(record["epoch"])
            bar.update(task, completed=done % epochs, description=f"trial {trial.number} epoch {done}/{epochs}")

        study.optimize(
            Objective(cfg, train, val, dev, artifacts=artifacts, on_epoch=on_epoch),
            n_trials=budget.n_trials,
            timeout=budget.timeout,
            catch=(TrainingDiverged,),
            callbacks=callbacks,
            gc_after_trial=True,
        )
    return study
