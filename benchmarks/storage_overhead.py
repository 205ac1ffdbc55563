"""Per-trial orchestration time of a nasopt worker: what the storage, the sampler and the trial
record cost each trial, with no training.

Each worker is its own process and runs trials the way ``nasopt worker`` does: the study is
created or loaded with ``nasopt.storages.study.create_or_load`` and ``nasopt.search.samplers.make_sampler``
(studies/naslung.toml: NSGA-II, val_accuracy against params), the storage is opened with
``open_storage(url, heartbeat=2.0, read_notes=False)`` (so Optuna's heartbeat thread runs and
stale trials are looked for before each trial), and each trial is one
``study.optimize(objective, n_trials=1, gc_after_trial=True)`` followed by
``nasopt.search.worker.freeze_survivors()``. The objective suggests the real search space
(``nasopt.search.space.suggest``: the genes and the architecture in one commit) and, as
``nasopt.search.objective.Objective`` does, writes a realistic trial record and four artifacts
(``upload_artifact`` of a few bytes each: a trial system attribute apiece) in one
``nasopt.storages.writes.deferred_writes`` block, then the dashboard note
(``nasopt.storages.writes.save_note``: study system attributes). The record is the worker's user
attributes: arch, params, FLOPs, a 20-epoch curve, timings, norm, device, worker, five
validation metrics. ``--record attrs`` writes the user attributes only, with artifact ids as
uuid strings, to show what the note and the artifact records cost. Values are drawn at random.

A worker's first trial (which loads the whole study into Optuna's cache) is reported apart, as
``cold``; then all workers start together and each times ``--timed`` trials (none started after
``--round-seconds``), and runs untimed ones until every worker is done, so the load stays the
same throughout. By default trials run back to back: every worker orchestrates all the time,
which measures what the storage sustains, not what a training worker pays. ``--train-seconds S``
puts a sleep of 0.5-1.5 S (drawn per trial) between a trial's ask and its record, as training
would, and starts the workers up to S apart; the sleep is not in the figures. A row's median
and p90 are over all timed trials of all workers; ``cpu`` is the median CPU time of the worker
process itself, so ``ms - cpu`` is time spent waiting for the database, the proxy or a core
(with ``--train-seconds``, ``cpu`` includes the heartbeat thread's during the sleep);
``stale`` counts trials another worker failed because their heartbeat was late (``--heartbeat``
2 s gives a 6 s grace period; an overloaded machine misses it).

Studies are filled before timing, in one transaction of bulk inserts into Optuna's tables, with
trials like the ones the benchmark makes (same distributions as ``suggest`` creates, NSGA-II
generation numbers, user attributes, notes and artifact records); the NSGA-II parent cache of
every generation is then computed once, as a running study would have it. A storage's study
grows from one size to the next, so a row's ``trials`` is what the study held when it started.

Storages: ``sqlite`` (a file in a scratch folder), ``postgresql`` (``--postgres URL``, else a
throwaway server started with initdb/pg_ctl from /usr/lib/postgresql/*/bin, default durability
settings, stopped and deleted at the end), ``grpc`` (``nasopt storage-proxy`` in front of the
PostgreSQL database, or of SQLite when there is none) and ``grpc-cached`` (a proxy that wraps
its database in Optuna's ``_CachedStorage``, as Optuna's documentation asks; not what
``nasopt storage-proxy`` does).

    python benchmarks/storage_overhead.py                       # the full run (defaults below)
    python benchmarks/storage_overhead.py --storages postgresql --trials-in-study 5000 \
        --workers 1 16 --timed 5 [--train-seconds 10]          # docs/performance.md's rows
    python benchmarks/storage_overhead.py --quick               # a 20-trial SQLite smoke run
    python benchmarks/storage_overhead.py --storages postgresql --workers 1 --profile

Target: a median under 100 ms at 5 000 trials and 16 workers on PostgreSQL. With more workers
than cores, back-to-back figures include waiting for a core; the script says so.

Runtime on a shared 2-core AMD EPYC (2026-11-28): docs/performance.md's PostgreSQL rows took about 100 s
back to back and 4 minutes with --train-seconds 10, each with about 15 s filling the study and
30 s of the 16 workers' cold trials (each loads 5 000 trials). The default grid with --timed 5
(1 000 and 5 000 trials, 1, 4 and 16 workers, three storages) took 13 minutes, most of it the
gRPC proxy's rows.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import math
import multiprocessing as mp
import os
import pstats
import pwd
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STUDY_FILE = ROOT / "studies" / "naslung.toml"
HEARTBEAT = 2.0
TARGET_MS, TARGET_TRIALS, TARGET_WORKERS, TARGET_STORAGE = 100.0, 5000, 16, "postgresql"
METRICS = ("accuracy", "auc", "sensitivity", "specificity", "f1")
ARTIFACT_KEYS = ("artifact_weights", "artifact_val_predictions", "artifact_curve_png", "artifact_attention_png")
STORAGES = ("sqlite", "postgresql", "grpc", "grpc-cached")


# --- The machine. ---


def cpu_model() -> str:
    """``lscpu``'s model name (the machines are shared: figures from two CPUs do not compare)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- A throwaway PostgreSQL server (as tests/conftest.py's `postgres` fixture starts one). ---


def postgres_bin() -> Path | None:
    """PostgreSQL's server programs: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    newest = max(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: float(p.parts[-3]), default=None)
    return newest.parent if newest else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def throwaway_postgres(bin_dir: Path) -> Iterator[str]:
    """Start a server on loopback in a scratch folder (as the ``postgres`` user when root, since the
    server refuses to run as root), yield its URL, then stop it and delete the folder."""
    root = Path(tempfile.mkdtemp(prefix="nasopt-bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password, port, db = "bench-pw", free_port(), root / "db"
    (root / "pw").write_text(password)

    def run(*cmd: object) -> None:
        proc = subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode:
            raise RuntimeError(f"{Path(str(cmd[0])).name} failed: {proc.stdout}{proc.stderr}")

    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(db), "-l", str(root / "log")]
    try:
        run(bin_dir / "initdb", "-D", db, "-U", "nasopt", "--pwfile", root / "pw", "--auth", "scram-sha-256")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        run(bin_dir / "pg_ctl", "start", "-w", "-D", db, "-l", root / "log", "-o", options)
        yield f"postgresql+psycopg://nasopt:{password}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "stop", "-m", "immediate"], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


# --- The gRPC proxy. ---


def serve_proxy(db_url: str, port: int, cached: bool, log: str) -> None:
    """Run ``nasopt storage-proxy`` in front of ``db_url`` (in a spawned process, output to ``log``);
    ``cached`` runs Optuna's proxy on the database wrapped in ``_CachedStorage`` instead."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if not cached:
        from nasopt.cli.app import app

        app(["storage-proxy", "--storage", db_url, "--host", "127.0.0.1", "--port", str(port)])
        return
    from optuna.storages import get_storage, run_grpc_proxy_server

    from nasopt.storages.url import open_storage, quiet_experimental

    with quiet_experimental():
        run_grpc_proxy_server(get_storage(open_storage(db_url, heartbeat=None)), host="127.0.0.1", port=port)


@contextmanager
def grpc_proxy(db_url: str, cached: bool, log: Path) -> Iterator[str]:
    """A storage proxy in front of ``db_url`` for as long as the block runs; yields its grpc:// URL."""
    from nasopt.storages.url import open_storage

    port = free_port()
    proc = mp.get_context("spawn").Process(target=serve_proxy, args=(db_url, port, cached, str(log)), daemon=True)
    proc.start()
    url = f"grpc://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                open_storage(url, heartbeat=None)
                break
            except Exception:
                if not proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the storage proxy did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.join(30)


# --- What a trial records (shared by the pre-fill and the workers' objective). ---


#: A worker's provenance record (nasopt.search.provenance), as large as a real one.
PROVENANCE = {
    "nasopt": "0.1.0",
    "git": {"commit": "0" * 40, "dirty": False},
    "torch": "2.13.0+cu128",
    "optuna": "5.1.0",
    "numpy": "2.4.6",
    "device": "NVIDIA H100 80GB HBM3",
    "deterministic": {"precision": "bf16", "threads": 8, "channels_last": "auto",
                      "deterministic_algorithms": False, "cudnn_benchmark": False},
    "data": "0123456789abcdef",
    "split": "fedcba9876543210",
}  # fmt: skip


def trial_record(
    rng: random.Random, arch: Any, number: int, worker: dict[str, Any], artifact_ids: dict[str, str]
) -> tuple[dict[str, Any], tuple[float, float], str]:
    """User attributes, objective values (val_accuracy, params) and dashboard note of a trial."""
    from nasopt.artifacts.record import Key, val_key
    from nasopt.visualization.trial import trial_note

    metrics = {m: round(rng.uniform(0.5, 0.95), 4) for m in METRICS}
    params = int(math.exp(rng.uniform(math.log(5e3), math.log(5e6))))
    flops = int(params * rng.uniform(50, 400))
    seconds, samples_per_s = rng.uniform(60, 600), rng.uniform(200, 2000)
    curve = [
        {"epoch": e + 1, "train_loss": rng.uniform(0.1, 2.0), "lr": 2e-4 * (1 - e / 20)}
        | {val_key(m): rng.uniform(0.5, 0.95) for m in METRICS}
        for e in range(20)
    ]
    attrs: dict[str, Any] = {
        Key.ARCH: arch.to_dict(),
        Key.ARCH_SUMMARY: arch.summary(),
        Key.WORKER: worker,
        **{val_key(m): v for m, v in metrics.items()},
        Key.PARAMS: params,
        Key.FLOPS: flops,
        Key.CURVE: curve,
        Key.TRAIN_SECONDS: round(seconds, 2),
        Key.SAMPLES_PER_S: round(samples_per_s, 1),
        Key.NORM: [-700.0 + rng.uniform(-50, 50), 300.0 + rng.uniform(-30, 30)],
        Key.DEVICE: "cuda:0",
        Key.LATENCY: round(rng.uniform(1, 20), 3),
        Key.LATENCY_32: round(rng.uniform(5, 200), 3),
        Key.DEVICE_NAME: "NVIDIA H100 80GB HBM3",
        Key.LATENCY_SECONDS: round(rng.uniform(0.1, 1), 3),
        Key.PROVENANCE: PROVENANCE | {"seed": number},
        **artifact_ids,
    }
    note = trial_note(number, arch, attrs)
    return attrs, (metrics["accuracy"], float(params)), note


def artifact_meta(artifact_id: str, name: str) -> str:
    """The JSON ``upload_artifact`` stores under ``artifacts:<id>`` for a file it uploads."""
    return json.dumps({"artifact_id": artifact_id, "filename": name, "mimetype": None, "encoding": None})


def search_space(cfg: Any) -> dict[str, Any]:
    """The distributions ``nasopt.search.space.suggest`` creates, from one trial asked in memory."""
    import optuna

    from nasopt.search.space import suggest

    probe = optuna.create_study(directions=["maximize", "minimize"])
    trial = probe.ask()
    suggest(trial, cfg.space)
    return dict(trial.distributions)


def draw_params(rng: random.Random, dists: dict[str, Any]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    params: dict[str, Any] = {}
    for name, d in dists.items():
        if isinstance(d, CategoricalDistribution):
            params[name] = rng.choice(d.choices)
        elif isinstance(d, IntDistribution):
            params[name] = rng.randint(d.low, d.high)
        elif isinstance(d, FloatDistribution) and d.log:
            params[name] = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
        elif isinstance(d, FloatDistribution):
            params[name] = rng.uniform(d.low, d.high)
        else:
            raise TypeError(f"{name}: unexpected distribution {d!r}")
    return params


# --- Pre-filling a study. ---


@dataclass
class FakeTrial:
    number: int
    params: dict[str, Any]
    values: tuple[float, float]
    attrs: dict[str, Any]
    system: dict[str, Any]
    note: str


def fill(db_url: str, study_name: str, target: int, cfg: Any, record: str, seed: int) -> int:
    """Add complete trials to ``study_name`` until it holds ``target`` (bulk inserts into Optuna's
    tables), with NSGA-II's parent cache computed as the workers would have; returns the trials added."""
    import optuna

    from nasopt.search.samplers import make_sampler
    from nasopt.storages.study import create_or_load
    from nasopt.storages.url import open_storage

    storage = open_storage(db_url, heartbeat=None)
    sampler = make_sampler("nsga2", cfg, seed)
    study = create_or_load(study_name, cfg, storage, sampler, db_url)
    trials = study.get_trials(deepcopy=False)
    n_new = target - len(trials)
    if n_new > 0:
        dists = search_space(cfg)
        rng = random.Random(f"{seed}-{study_name}-{len(trials)}")
        new = fake_trials(rng, cfg, dists, trials, n_new, sampler._get_generation_key(), record)
        ids = bulk_insert(storage.engine, study._study_id, new, dists)
        # Every generation's parent population, as the workers that reached it cached it (before
        # the notes: each generation reads all study system attributes).
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
        generations = [t.system[sampler._get_generation_key()] for t in new]
        for generation in range(max(1, generations[0]), generations[-1] + 1):
            sampler.get_parent_population(study, generation)
        if record == "worker":
            insert_notes(storage.engine, study._study_id, new, ids)
    storage.engine.dispose()
    return max(n_new, 0)


def fake_trials(
    rng: random.Random, cfg: Any, dists: dict[str, Any], trials: list[Any], n: int, gen_key: str, record: str
) -> list[FakeTrial]:
    """``n`` complete trials numbered after ``trials``, continuing its NSGA-II generations."""
    from optuna.trial import TrialState

    from nasopt.search.space import decode

    pop = cfg.study.population_size
    complete = Counter(t.system_attrs.get(gen_key, 0) for t in trials if t.state == TrialState.COMPLETE)
    generation = max(complete, default=0)
    filled = complete.get(generation, 0)
    worker = {"host": socket.gethostname(), "pid": os.getpid(), "index": 0}
    out = []
    for number in range(len(trials), len(trials) + n):
        if filled >= pop:
            generation, filled = generation + 1, 0
        filled += 1
        params = draw_params(rng, dists)
        ids = {k: str(uuid.uuid4()) for k in ARTIFACT_KEYS}
        attrs, values, note = trial_record(rng, decode(params, cfg.space), number, worker, ids)
        system: dict[str, Any] = {gen_key: generation}
        if record == "worker":
            system |= {f"artifacts:{a}": artifact_meta(a, k) for k, a in ids.items()}
        out.append(FakeTrial(number, params, values, attrs, system, note))
    return out


def bulk_insert(engine: Any, study_id: int, trials: list[FakeTrial], dists: dict[str, Any]) -> dict[int, int]:
    """Insert complete trials with their params, values and attributes in one transaction; returns
    their ids by number."""
    import sqlalchemy as sa
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    dist_json = {name: distribution_to_json(d) for name, d in dists.items()}
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    table = models.TrialModel.__table__
    with engine.begin() as conn:
        conn.execute(
            sa.insert(table),
            [
                {
                    "number": t.number,
                    "study_id": study_id,
                    "state": TrialState.COMPLETE,
                    "datetime_start": now - datetime.timedelta(seconds=300),
                    "datetime_complete": now,
                }
                for t in trials
            ],
        )
        where = (table.c.study_id == study_id) & (table.c.number >= trials[0].number)
        ids = dict(conn.execute(sa.select(table.c.number, table.c.trial_id).where(where)).all())
        rows: dict[Any, list[dict[str, Any]]] = {
            models.TrialParamModel: [],
            models.TrialValueModel: [],
            models.TrialUserAttributeModel: [],
            models.TrialSystemAttributeModel: [],
        }
        for t in trials:
            trial_id = ids[t.number]
            rows[models.TrialParamModel] += [
                {
                    "trial_id": trial_id,
                    "param_name": name,
                    "param_value": dists[name].to_internal_repr(value),
                    "distribution_json": dist_json[name],
                }
                for name, value in t.params.items()
            ]
            for objective, value in enumerate(t.values):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                rows[models.TrialValueModel].append(
                    {"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind}
                )
            for model, attrs in (
                (models.TrialUserAttributeModel, t.attrs),
                (models.TrialSystemAttributeModel, t.system),
            ):
                rows[model] += [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
        for model, batch in rows.items():
            conn.execute(sa.insert(model.__table__), batch)
    return ids


def insert_notes(engine: Any, study_id: int, trials: list[FakeTrial], ids: dict[int, int]) -> None:
    """The trials' dashboard notes: study system attributes, as ``save_note`` writes them."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models
    from optuna_dashboard._note import note_ver_key, split_body

    rows = []
    for t in trials:
        note = {note_ver_key(ids[t.number]): 1} | split_body(t.note, ids[t.number])
        rows += [{"study_id": study_id, "key": k, "value_json": json.dumps(v)} for k, v in note.items()]
    with engine.begin() as conn:
        conn.execute(sa.insert(models.StudySystemAttributeModel.__table__), rows)


# --- The workers. ---


@dataclass
class WorkerJob:
    url: str
    study_name: str
    index: int
    timed: int
    record: str
    scratch: str
    budget_s: float
    heartbeat: float
    train_seconds: float = 0.0
    profile: str | None = None


@dataclass
class WorkerResult:
    index: int
    ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    cold_ms: float = 0.0
    untimed: int = 0
    stale: int = 0  # trials another worker failed as stale (heartbeat older than the grace period)
    error: str | None = None


def worker(job: WorkerJob, start: Any, finished: Any, n_workers: int, results: Any) -> None:
    """One worker process: load the study, run a cold trial, wait for the others, time trials."""
    counted = False

    def timings_done() -> None:  # the others keep running trials until every worker has called this
        nonlocal counted
        if not counted:
            with finished.get_lock():
                finished.value += 1
            counted = True

    try:
        results.put(asdict(_work(job, start, timings_done, lambda: finished.value < n_workers)))
    except BaseException:
        start.abort()
        timings_done()
        results.put(asdict(WorkerResult(job.index, error=traceback.format_exc())))


def _work(
    job: WorkerJob, start: Any, timings_done: Callable[[], None], others_busy: Callable[[], bool]
) -> WorkerResult:
    import optuna
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    from nasopt.config.schema import load_config
    from nasopt.search.samplers import make_sampler
    from nasopt.search.space import suggest
    from nasopt.search.worker import freeze_survivors
    from nasopt.storages.study import create_or_load
    from nasopt.storages.url import open_storage
    from nasopt.storages.writes import deferred_writes, save_note, set_user_attrs

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # stale trials are counted, not logged
    cfg = load_config(STUDY_FILE)
    seed = cfg.study.seed + job.index
    storage = open_storage(job.url, heartbeat=job.heartbeat, read_notes=False)  # as nasopt.search.worker does
    study = create_or_load(job.study_name, cfg, storage, make_sampler("nsga2", cfg, seed), job.url)
    rng = random.Random(seed)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "index": job.index}
    (Path(job.scratch) / "artifacts").mkdir(exist_ok=True)
    store = FileSystemArtifactStore(str(Path(job.scratch) / "artifacts"))
    blob = Path(job.scratch) / f"blob-{job.index}.bin"
    blob.write_bytes(os.urandom(64))

    def artifact_ids(trial: optuna.Trial) -> dict[str, str]:
        if job.record == "attrs":
            return {k: str(uuid.uuid4()) for k in ARTIFACT_KEYS}
        # As Objective._upload does, of a 64-byte file: a trial system attribute per artifact.
        return {
            k: upload_artifact(artifact_store=store, file_path=str(blob), study_or_trial=trial) for k in ARTIFACT_KEYS
        }

    current: list[int] = []
    trained = [0.0]

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        current[:] = [trial._trial_id]
        arch, _ = suggest(trial, cfg.space)
        # "Training": no CPU, the heartbeat thread beats meanwhile. Its length varies from trial to
        # trial, as architectures' do, so workers that started together drift apart.
        trained[:] = [rng.uniform(0.5, 1.5) * job.train_seconds]
        time.sleep(trained[0])
        with deferred_writes(trial):  # as the objective writes its record and artifact ids
            attrs, values, note = trial_record(rng, arch, trial.number, me, artifact_ids(trial))
            set_user_attrs(trial, attrs)
        if job.record == "worker":
            save_note(trial, note)
        return values

    result = WorkerResult(job.index)

    def one() -> tuple[float, float] | None:
        """One trial as the worker runs it: (wall ms, CPU ms) without the simulated training, or None
        when it was failed as stale."""
        wall, cpu = time.perf_counter(), time.process_time()
        current.clear()
        trained[:] = [0.0]
        try:
            study.optimize(objective, n_trials=1, gc_after_trial=True)
            freeze_survivors()  # as nasopt.search.worker does after each trial
        except Exception:
            # The objective never fails: a failed trial was failed by another worker's stale-trial
            # check (its write then raises, or Optuna's tell does).
            if not current or study._storage.get_trial(current[0]).state != optuna.trial.TrialState.FAIL:
                raise
            result.stale += 1
            return None
        return 1000 * (time.perf_counter() - wall - trained[0]), 1000 * (time.process_time() - cpu)

    cold = one()
    result.cold_ms = cold[0] if cold else math.nan
    start.wait()
    time.sleep(rng.uniform(0, job.train_seconds))  # workers join a running search at different moments
    deadline = time.monotonic() + job.budget_s  # CLOCK_MONOTONIC: the same clock in every process
    profiler = cProfile.Profile() if job.profile and job.index == 0 else None
    for _ in range(job.timed):
        if result.ms and time.monotonic() > deadline:
            break
        if profiler:
            profiler.enable()
        timing = one()
        if profiler:
            profiler.disable()
        if timing:
            result.ms.append(timing[0])
            result.cpu_ms.append(timing[1])
    timings_done()
    while others_busy():  # keep the load on until every worker has its timings
        one()
        result.untimed += 1
    if profiler and job.profile:
        profiler.dump_stats(job.profile)
    return result


def run_round(url: str, study_name: str, n: int, args: argparse.Namespace, scratch: Path, profile: str | None) -> dict:
    """``n`` worker processes against one study; the timings of all of them."""
    ctx = mp.get_context("spawn")
    start, finished, results = ctx.Barrier(n, timeout=3600), ctx.Value("i", 0), ctx.Queue()
    jobs = [
        WorkerJob(
            url,
            study_name,
            i,
            args.timed,
            args.record,
            str(scratch),
            args.round_seconds,
            args.heartbeat,
            args.train_seconds,
            profile,
        )
        for i in range(n)
    ]
    procs = [ctx.Process(target=worker, args=(job, start, finished, n, results)) for job in jobs]
    for p in procs:
        p.start()
    got: list[WorkerResult] = []
    while len(got) < n:
        try:
            got.append(WorkerResult(**results.get(timeout=10)))
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and results.empty():
                raise RuntimeError(f"{n - len(got)} worker(s) died without a result") from None
    for p in procs:
        p.join(60)
    failed = [r.error for r in got if r.error]
    if failed:  # the first cause, not the others' broken barrier
        raise RuntimeError("a worker failed:\n" + next((e for e in failed if "BrokenBarrier" not in e), failed[0]))
    ms = [m for r in got for m in r.ms]
    if not ms:
        raise RuntimeError(f"no timed trial completed ({sum(r.stale for r in got)} failed as stale)")
    cold = [r.cold_ms for r in got if not math.isnan(r.cold_ms)] or [math.nan]
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": statistics.quantiles(ms, n=10)[-1] if len(ms) > 1 else ms[0],
        "cpu_ms": statistics.median(c for r in got for c in r.cpu_ms),
        "cold_ms": statistics.median(cold),
        "timed": len(ms),
        "untimed": sum(r.untimed for r in got) + n,
        "stale": sum(r.stale for r in got),
    }


# --- The benchmark. ---


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials-in-study", type=int, nargs="+", default=[1000, 5000], metavar="N")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16], metavar="N")
    ap.add_argument("--storages", nargs="+", default=["sqlite", "postgresql", "grpc"], choices=STORAGES)
    ap.add_argument("--timed", type=int, default=10, help="timed trials per worker")
    ap.add_argument(
        "--round-seconds",
        type=float,
        default=600,
        help="a worker starts no more timed trials (past its first) this long after the timing began",
    )
    ap.add_argument(
        "--heartbeat", type=float, default=HEARTBEAT, help="seconds between heartbeats (nasopt's default is 60)"
    )
    ap.add_argument(
        "--train-seconds",
        type=float,
        default=0.0,
        help="each trial sleeps 0.5-1.5 times this long between its ask and its record, as training would "
        "(not timed), and workers start up to this long apart; 0: trials back to back, every worker "
        "orchestrating all the time",
    )
    ap.add_argument("--postgres", metavar="URL", help="a PostgreSQL database to use (default: a throwaway server)")
    ap.add_argument(
        "--record",
        choices=("worker", "attrs"),
        default="worker",
        help="worker: user attributes, dashboard note and artifact records; attrs: user attributes only",
    )
    ap.add_argument("--json", metavar="OUT", help="write the rows and the machine to this JSON file")
    ap.add_argument("--profile", action="store_true", help="profile worker 0's timed trials of each row")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20 trials, 2 workers, SQLite, 3 timed")
    args = ap.parse_args(argv)
    if args.quick:
        args.trials_in_study, args.workers, args.storages, args.timed = [20], [2], ["sqlite"], 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    t_start = time.monotonic()
    import optuna

    from nasopt.config.schema import load_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(STUDY_FILE)
    n_cores = cores()
    print(f"CPU: {cpu_model()}, {n_cores} cores; load average {os.getloadavg()[0]:.1f} at start")
    print(
        f"study: {STUDY_FILE.relative_to(ROOT)}, NSGA-II (population {cfg.study.population_size}), "
        f"objectives {', '.join(cfg.study.objectives)}; heartbeat {args.heartbeat:g} s; record: {args.record}; "
        + (
            f"{args.train_seconds / 2:g}-{1.5 * args.train_seconds:g} s of simulated training per trial "
            "(not in the figures)"
            if args.train_seconds
            else "trials back to back (no training)"
        )
    )
    if max(args.workers) > n_cores:
        print(
            f"note: {max(args.workers)} worker processes on {n_cores} cores are CPU-bound; "
            "their figures include waiting for a core"
        )
    rows: list[dict[str, Any]] = []
    fill_s = 0.0
    scratch = Path(tempfile.mkdtemp(prefix="nasopt-bench-storage-"))
    names = [f"storage-overhead-{s}-{os.getpid()}" for s in args.storages]
    try:
        with _databases(args, scratch) as urls:
            for storage, name in zip(args.storages, names):
                db_url = urls["sqlite"] if storage == "sqlite" else urls.get("postgresql")
                if storage == "postgresql" and db_url is None:
                    print("postgresql: skipped (no PostgreSQL server programs found; pass --postgres URL)")
                    continue
                if storage.startswith("grpc"):
                    db_url = db_url or urls["sqlite"]
                    front = db_url.split(":")[0].split("+")[0]
                    print(f"{storage}: a proxy in front of {front}, without heartbeats (Optuna's proxy has none)")
                fill_s += _measure_storage(storage, db_url, name, cfg, args, scratch, rows)
            if args.postgres:
                _drop_studies(args.postgres, names)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = time.monotonic() - t_start
    _table(rows, n_cores)
    print(_verdict(rows))
    print(f"benchmark took {total:.0f} s ({fill_s:.0f} s filling studies)")
    if args.json:
        meta = {
            "cpu": cpu_model(),
            "cores": n_cores,
            "record": args.record,
            "train_seconds": args.train_seconds,
            "seconds": round(total, 1),
        }
        Path(args.json).write_text(json.dumps({"machine": meta, "rows": rows}, indent=1))
    return 0


def _measure_storage(
    storage: str, db_url: str, name: str, cfg: Any, args: argparse.Namespace, scratch: Path, rows: list[dict]
) -> float:
    """Fill the storage's study to each size and run each worker count on it (rows appended and
    printed as they come); returns the seconds spent filling."""
    fill_s = 0.0
    for size in sorted(set(args.trials_in_study)):
        t0 = time.monotonic()
        added = fill(db_url, name, size, cfg, args.record, cfg.study.seed)
        fill_s += time.monotonic() - t0
        print(f"{storage}: {added} trials added to the study in {time.monotonic() - t0:.1f} s", flush=True)
        with _front(storage, db_url, scratch) as url:
            for n in args.workers:
                held = _count(db_url, name)
                profile = str(scratch / f"profile-{storage}-{held}-{n}.prof") if args.profile else None
                row = {"storage": storage, "trials": held, "workers": n} | run_round(
                    url, name, n, args, scratch, profile
                )
                rows.append(row)
                print(_line(row), flush=True)
                if profile:
                    _print_profile(profile)
    return fill_s


@contextmanager
def _databases(args: argparse.Namespace, scratch: Path) -> Iterator[dict[str, str]]:
    """The SQLite file and (when a storage needs one) the PostgreSQL database to use."""
    urls = {"sqlite": f"sqlite:///{scratch / 'bench.db'}"}
    needs_pg = any(s != "sqlite" for s in args.storages)
    if args.postgres or not needs_pg:
        if args.postgres:
            urls["postgresql"] = args.postgres
        yield urls
        return
    bin_dir = postgres_bin()
    if bin_dir is None:
        yield urls
        return
    with throwaway_postgres(bin_dir) as url:
        yield urls | {"postgresql": url}


@contextmanager
def _front(storage: str, db_url: str, scratch: Path) -> Iterator[str]:
    """The URL workers open: the database's, or a gRPC proxy's in front of it."""
    if storage.startswith("grpc"):
        with grpc_proxy(db_url, storage == "grpc-cached", scratch / f"{storage}-proxy.log") as url:
            yield url
    else:
        yield db_url


def _count(db_url: str, name: str) -> int:
    """The trials study ``name`` holds (counted in the database: loading them takes seconds)."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    from nasopt.storages.url import open_storage

    storage = open_storage(db_url, heartbeat=None)
    trials = models.TrialModel.__table__
    try:
        with storage.engine.connect() as conn:
            query = sa.select(sa.func.count()).where(trials.c.study_id == storage.get_study_id_from_name(name))
            return conn.execute(query).scalar_one()
    finally:
        storage.engine.dispose()


def _drop_studies(db_url: str, names: list[str]) -> None:
    import optuna

    from nasopt.storages.url import open_storage

    storage = open_storage(db_url, heartbeat=None)
    for name in names:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass


HEADER = (
    f"{'storage':<12} {'trials':>6} {'workers':>7} {'median ms':>9} {'p90 ms':>8} {'cpu ms':>7} {'cold ms':>8} "
    f"{'timed':>5} {'stale':>5}"
)


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['storage']:<12} {r['trials']:>6} {r['workers']:>7} {r['median_ms']:>9.1f} {r['p90_ms']:>8.1f} "
        f"{r['cpu_ms']:>7.1f} {r['cold_ms']:>8.0f} {r['timed']:>5} {r['stale']:>5}"
    )


def _table(rows: list[dict[str, Any]], n_cores: int) -> None:
    print()
    print(HEADER)
    for r in rows:
        print(_line(r) + ("  (more workers than cores)" if r["workers"] > n_cores else ""))
    print(
        "median/p90: wall time of one study.optimize(n_trials=1) over all timed trials of all workers; "
        "cpu: the worker's own CPU time; cold: a worker's first trial (loads the study); "
        "stale: trials another worker failed for a late heartbeat (not timed)"
    )


def _verdict(rows: list[dict[str, Any]]) -> str:
    goal = f"median < {TARGET_MS:.0f} ms at {TARGET_TRIALS} trials, {TARGET_WORKERS} workers, {TARGET_STORAGE}"
    hits = [
        r
        for r in rows
        if r["storage"] == TARGET_STORAGE and r["workers"] == TARGET_WORKERS and r["trials"] >= TARGET_TRIALS
    ]
    if not hits:
        return f"target ({goal}): not measured in this run"
    median = hits[0]["median_ms"]
    return f"target ({goal}): {'met' if median < TARGET_MS else 'NOT met'}, {median:.1f} ms"


def _print_profile(path: str, top: int = 40) -> None:
    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top // 2)
    print(out.getvalue())


if __name__ == "__main__":
    sys.exit(main())
