"""The worker loop: load the data and the study, then ask-train-tell until a budget runs out.

Any number of workers, on any hosts, may run this loop against one storage. Each trial is
handed to one worker by the storage, and records that worker (host, process id, index).

The study-wide budget (``max_trials``) is exact, whatever the number of workers: a trial runs
only if fewer than ``max_trials`` trials numbered below it are complete, running or waiting.
Trial numbers are given out in order by the storage, so of trials created at the same moment
only the ones the budget has room for run; the others end failed with the reason "budget
reached" before training. A worker starts a trial only while complete plus running trials are
below the budget, and otherwise waits: a running trial of a dead worker becomes failed after its
heartbeat's grace period, and its retry then needs a worker (without heartbeats it exits).

SIGTERM, as Slurm and Kubernetes send it, fails the running trial with reason "stopped",
queues a retry of it with the same parameters, and ends the worker (exit status 143).
"""

from __future__ import annotations

import gc
import importlib
import os
import random
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import Progress

from nasopt.artifacts.record import Key, val_key
from nasopt.artifacts.store import artifact_location, study_artifacts
from nasopt.config.schema import StudyConfig
from nasopt.data.prepare import load_data
from nasopt.data.splits import study_sets
from nasopt.search.constraints import check_reachable, describe
from nasopt.search.objective import Objective, Presentation
from nasopt.search.provenance import provenance
from nasopt.search.pruners.moasha import make_fidelity
from nasopt.search.samplers import make_sampler
from nasopt.storages.study import create_or_load
from nasopt.storages.url import (
    HEARTBEAT,
    heartbeat_enabled,
    open_storage,
    quiet_experimental,
    quiet_trial_failures,
    redact,
    storage_url,
)
from nasopt.storages.writes import set_user_attrs
from nasopt.training.fit import TrainingDiverged, resolve_device
from nasopt.visualization.trial import trial_figures, trial_note

#: Environment variables that number the workers of a job, in the order they are tried.
INDEX_VARIABLES = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")  # Slurm array, Kubernetes Indexed Job
#: Seconds between looks at the study while it waits for other workers' running trials.
POLL = 2.0
STOPPED = "stopped"
LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class Budget:
    n_trials: int | None = None  # trials this process runs
    max_trials: int | None = None  # complete trials in the whole study
    timeout: float | None = None  # seconds this process runs


@dataclass(frozen=True)
class WorkerOptions:
    """Everything one search worker is run with: ``nasopt worker``, ``search`` and ``launch``
    take exactly these options, and ``launch`` hands them to its workers as :meth:`argv`."""

    study: str = "nasopt"
    config: Path | None = None  # the study file; its defaults when absent
    overrides: tuple[str, ...] = ()  # --set section.key=value, in order
    storage: str | None = None
    artifacts: str | None = None
    budget: Budget = Budget()
    sampler: str | None = None  # else the study file's
    device: str = "auto"
    seed: int | None = None  # else the study file's; plus the worker index
    threads: int | None = None
    index: int | None = None  # see worker_index()
    heartbeat: float = HEARTBEAT

    def argv(self) -> list[str]:
        """These options as a ``nasopt worker`` command line (defaults left out)."""
        given = {
            "--study": self.study, "--config": self.config, "--storage": self.storage, "--artifacts": self.artifacts,
            "--n-trials": self.budget.n_trials, "--max-trials": self.budget.max_trials,
            "--timeout": self.budget.timeout, "--sampler": self.sampler, "--device": self.device, "--seed": self.seed,
            "--threads": self.threads, "--worker-index": self.index, "--heartbeat": self.heartbeat,
        }  # fmt: skip
        args = [a for flag, value in given.items() if value is not None for a in (flag, str(value))]
        return args + [a for o in self.overrides for a in ("--set", o)]


class Stopped(Exception):
    """SIGTERM arrived: the running trial fails with reason "stopped" and is retried."""


class OverBudget(Exception):
    """The trial was created when the study's budget was already taken by earlier trials."""


# Diverged, interrupted, stopped or over-budget trials get nasopt's own one-line report.
quiet_trial_failures((TrainingDiverged, KeyboardInterrupt, Stopped, OverBudget))


def worker_index(flag: int | None = None) -> int | None:
    """``--worker-index``, else the job's array index from the environment, else ``None``."""
    if flag is not None:
        return flag
    for name in INDEX_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def over_budget(trials: list[FrozenTrial], number: int, max_trials: int) -> bool:
    """Whether trial ``number`` must not run: ``max_trials`` trials numbered below it are (or may
    become) complete. Pure, so it is tested on hand-made trial lists."""
    return sum(1 for t in trials if t.number < number and t.state in LIVE) >= max_trials


def _counts(study: optuna.Study) -> tuple[int, int]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(1 for t in trials if t.state == TrialState.COMPLETE)
    return complete, len(trials) - complete


def _room(study: optuna.Study, max_trials: int, heartbeat: bool, guard: _SignalGuard) -> bool:
    """Wait until the study has room for a trial (``True``) or its budget is met (``False``)."""
    while True:
        if heartbeat:
            with quiet_experimental():
                fail_stale_trials(study)  # a dead worker's trial fails and is queued for a retry
        complete, running = _counts(study)
        if complete >= max_trials:
            return False
        if complete + running < max_trials:
            return True
        if not heartbeat:  # nothing would ever fail a dead worker's trial: do not wait for it
            return False
        with guard.interruptible():
            time.sleep(POLL)


class _SignalGuard:
    """Turns SIGTERM into :class:`Stopped` and Ctrl-C (SIGINT) into ``KeyboardInterrupt``, raised
    only where it is safe: while data loads or a trial trains, never inside a storage call. A
    signal that arrives elsewhere is raised at the next safe point: entering or leaving a safe
    block, leaving a shielded one (the objective shields its storage calls, each epoch's
    included), or leaving the guard. An interrupt inside a storage call broke the call's
    connection mid-statement and printed the pool's traceback; one raised inside a finalizer
    (Python ignores those) was lost, and training went on."""

    def __init__(self) -> None:
        self.requested: type[BaseException] | None = None
        self.safe = False

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.requested is None
        self.requested = Stopped if signum == signal.SIGTERM else KeyboardInterrupt
        if self.safe and first:  # a second signal while the first unwinds is only recorded
            raise self.requested()

    def raise_requested(self) -> None:
        if self.requested is not None:
            raise self.requested()

    @contextmanager
    def installed(self) -> Iterator[None]:
        signals = [signal.SIGTERM]
        # A job started in the background without job control ignores SIGINT: keep it so.
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signals.append(signal.SIGINT)
        previous = {s: signal.signal(s, self._handle) for s in signals}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.raise_requested()

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        self.raise_requested()
        self.safe = True
        try:
            yield
        finally:
            self.safe = False
        self.raise_requested()

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """Inside a safe block: a part (a storage call) where a signal waits for the part's end."""
        safe, self.safe = self.safe, False
        try:
            yield
        finally:
            self.safe = safe
        if safe:
            self.raise_requested()


def _report(console: Console):
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        a = trial.user_attrs
        if trial.state == TrialState.COMPLETE and Key.OVER_BUDGET in a:
            over = describe(a[Key.OVER_BUDGET])
            console.print(f"trial {trial.number:>3}  over budget, not trained: {over}  {a[Key.ARCH_SUMMARY]}")
        elif trial.state == TrialState.COMPLETE:
            console.print(
                f"trial {trial.number:>3}  val acc {a[val_key('accuracy')]:.3f}  AUC {a[val_key('auc')]:.3f}  "
                f"params {a[Key.PARAMS]:>10,}  {a[Key.TRAIN_SECONDS]:6.1f} s  {a[Key.ARCH_SUMMARY]}"
            )
        elif trial.state == TrialState.PRUNED:
            console.print(
                f"trial {trial.number:>3}  stopped early at epoch {a.get(Key.STOPPED_AT)}: {a.get(Key.STOP_REASON)}  "
                f"params {a.get(Key.PARAMS, 0):>10,}  {a.get(Key.ARCH_SUMMARY, '')}"
            )
        elif trial.state == TrialState.FAIL:
            console.print(f"trial {trial.number:>3}  failed: {a.get(Key.FAIL_REASON) or 'see the log above'}")

    return callback


def run_search(cfg: StudyConfig, opts: WorkerOptions, console: Console | None = None) -> optuna.Study:
    """Create or resume study ``opts.study`` and run trials until ``opts.budget`` is spent.

    ``opts.index`` numbers this worker (:func:`worker_index`): its sampler seed is the study's
    seed (or ``opts.seed``) plus the index, so concurrent workers explore apart; without one the
    seed is random. Raises :class:`Stopped` after a SIGTERM.
    """
    console = console or Console(soft_wrap=True)  # result lines never wrap
    study_name, budget, index = opts.study, opts.budget, opts.index
    url = storage_url(opts.storage)
    base = cfg.study.seed if opts.seed is None else opts.seed
    seed = base + index if index is not None else random.SystemRandom().randrange(2**31)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "index": index}
    console.print(
        f"worker index {'none' if index is None else index}: host {me['host']}, pid {me['pid']}, sampler seed {seed}"
    )
    dev = resolve_device(opts.device)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    guard = _SignalGuard()
    with guard.installed():
        # Sampler, budgets, data and splits before the study: bad input must not leave one behind.
        sampler = make_sampler(opts.sampler or cfg.study.sampler, cfg, seed)
        check_reachable(cfg, dev)
        storage = open_storage(url, heartbeat=opts.heartbeat, read_notes=False)
        with guard.interruptible():
            ns = load_data(cfg.data, progress=True)
            train, val, _ = study_sets(cfg, ns)
        study = create_or_load(study_name, cfg, storage, sampler, url, opts.artifacts)
        store = study_artifacts(study, url, create=True)
        # torch imports torch._dynamo (~2 s, 800 modules) the first time an optimizer is built.
        # Pay it here, after bad input has had its chance to fail fast: its time stays out of
        # trial 0's, and a Ctrl-C during training cannot land in that import, where CPython may
        # swallow it or end the process with SIGINT status instead of 130.
        importlib.import_module("torch._dynamo")
        console.print(
            f"study {study_name!r} in {redact(url)}: {len(ns)} {ns.source} nodules; search trains on {len(train)}, "
            f"validates on {len(val)} (fold {cfg.split.val_fold}); test fold {cfg.split.test_fold} held out; "
            f"artifacts in {artifact_location(study, url)}"
        )
        epochs = cfg.train.epochs
        with Progress(*Progress.get_default_columns(), console=console, transient=True) as bar:
            task = bar.add_task("trial", total=epochs)

            def on_epoch(trial: optuna.Trial, record: dict[str, float]) -> None:
                done = int(record["epoch"])
                bar.update(task, completed=done % epochs, description=f"trial {trial.number} epoch {done}/{epochs}")

            shown = Presentation(trial_note, trial_figures)
            prov = provenance(cfg, ns, train, val, dev)
            objective = Objective(
                cfg, train, val, dev, store, on_epoch, make_fidelity(cfg), guard.shielded, shown, prov
            )
            _loop(study, objective, budget, me, guard, console)
    if budget.max_trials is not None:
        console.print(f"study {study_name!r}: {_counts(study)[0]} complete trials (budget {budget.max_trials})")
    return study


def _loop(
    study: optuna.Study, objective: Objective, budget: Budget, me: dict, guard: _SignalGuard, console: Console
) -> None:
    """Run trials one at a time until a budget is spent (or SIGTERM: :class:`Stopped`)."""
    current: list[int] = []

    def run_trial(trial: optuna.Trial) -> tuple[float, ...]:
        current[:] = [trial.number]
        attrs: dict[str, Any] = {Key.WORKER: me}
        if trial.user_attrs.get(Key.FAIL_REASON):  # a retry inherits its failed original's attributes
            attrs[Key.FAIL_REASON] = None
        set_user_attrs(trial, attrs)
        if budget.max_trials is not None and over_budget(
            study.get_trials(deepcopy=False), trial.number, budget.max_trials
        ):
            trial.set_user_attr(Key.FAIL_REASON, f"budget reached: {budget.max_trials} earlier trials may complete")
            raise OverBudget()
        try:
            with guard.interruptible():
                return objective(trial)
        except Stopped:
            trial.set_user_attr(Key.FAIL_REASON, STOPPED)
            raise

    heartbeat = heartbeat_enabled(study._storage)
    t0, done = time.monotonic(), 0
    while True:
        guard.raise_requested()
        if budget.n_trials is not None and done >= budget.n_trials:
            return
        if budget.timeout is not None and time.monotonic() - t0 >= budget.timeout:
            return
        if budget.max_trials is not None and not _room(study, budget.max_trials, heartbeat, guard):
            return
        current.clear()
        try:
            study.optimize(
                run_trial, n_trials=1, catch=(TrainingDiverged, OverBudget), callbacks=[_report(console)],
                gc_after_trial=True,
            )  # fmt: skip
        except Stopped:
            if current:
                _retry_stopped(study, current[0], console)
            raise
        except UpdateFinishedTrialError:
            # Another worker failed this trial as stale (its heartbeats stalled past the grace
            # period) and queued its retry; this worker's result is not stored. Go on.
            console.print(f"trial {current[0]:>3}  failed as stale by another worker (late heartbeats); not stored")
        freeze_survivors()
        done += 1


def freeze_survivors() -> None:
    """Exempt what outlived the trial from later garbage collections.

    Optuna collects garbage after every trial (``gc_after_trial``: torch leaves reference cycles
    behind), and a full collection scans every object: with the study's trials cached (5 000
    trials, hundreds of thousands of objects) that cost 280 ms a trial. What survived that
    collection is long-lived (torch, the data, the cache); freezing it leaves the next
    collection only what the next trial allocates.
    """
    gc.freeze()


def _retry_stopped(study: optuna.Study, number: int, console: Console) -> None:
    """Queue the stopped trial again with the same parameters, as Optuna's retry callback does."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if trial.state == TrialState.FAIL:
        with quiet_experimental():
            RetryHeartbeatStaleTrialCallback(max_retry=None)(study, trial)
        console.print(f"trial {number:>3}  stopped by SIGTERM; queued again with the same parameters")
