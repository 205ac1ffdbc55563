"""Storage URLs, samplers, study creation and loading, and where a study's artifacts live.

One study lives in one storage that every worker shares, chosen by the URL's scheme:

* ``sqlite:///``, ``postgresql+psycopg://``, ``mysql+...``: Optuna's RDB storage (SQLite in WAL
  mode with a busy timeout for one host; a server database for a cluster). Connections are
  pre-pinged and every call is retried with backoff on transient database errors, so a database
  restart costs the workers a pause. Heartbeats mark a dead worker's trial failed and retry it.
* ``grpc://host:port``: Optuna's ``GrpcStorageProxy`` in front of a database served by
  ``nasopt storage-proxy``.
* ``journal:///path/file``: Optuna's ``JournalFileBackend``, for a shared file system without a
  database. Like ``sqlite:///``, three slashes start a relative path and four an absolute one.

Passwords never reach logs or errors.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy.engine import make_url

from nasopt.config import StudyConfig, config_from_json
from nasopt.errors import ConfigError, StorageError
from nasopt.fidelity import MOASHA
from nasopt.rdb_storage import ResilientRDBStorage

DEFAULT_STORAGE = "sqlite:///storage/nasopt.db"
DIRECTIONS = {"val_accuracy": "maximize", "val_auc": "maximize", "params": "minimize", "flops": "minimize"}
CONFIG_ATTR = "nasopt_config"
FINGERPRINT_ATTR = "nasopt_config_fingerprint"
ARTIFACTS_ATTR = "nasopt_artifacts"
#: Seconds between a running trial's heartbeats; a trial is stale (failed, retried) after 3 missed.
HEARTBEAT = 60.0
#: Failed trials (a dead worker's, a stopped one) are retried this many times with the same parameters.
MAX_RETRY = 1


@contextmanager
def quiet_experimental() -> Iterator[None]:
    """Optuna flags heartbeats, NSGA-III, the gRPC proxy and metric names as experimental; nasopt
    relies on them knowingly, and the warnings would break the one-line output of the CLI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def storage_url(url: str | None = None) -> str:
    """The URL from the flag, else ``NASOPT_STORAGE``, else the SQLite default."""
    return url or os.environ.get("NASOPT_STORAGE") or DEFAULT_STORAGE


def scheme(url: str) -> str:
    """``sqlite``, ``postgresql``, ``mysql``, ``grpc`` or ``journal`` (the URL's backend)."""
    head = url.split("://", 1)[0] if "://" in url else ""
    return head.split("+", 1)[0]


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def storage_file(url: str) -> Path | None:
    """The file behind a SQLite or journal URL; ``None`` for server storages."""
    if scheme(url) == "journal":
        return Path(url[len("journal:///") :]) if url.startswith("journal:///") else None
    if scheme(url) == "sqlite":
        db = make_url(url).database
        return Path(db) if db and db != ":memory:" else None
    return None


def _scrub(text: str, url: str) -> str:
    try:
        password = make_url(url).password
    except Exception:
        password = None
    return text.replace(str(password), "***") if password else text


def open_storage(
    url: str | None = None, heartbeat: float | None = HEARTBEAT, create: bool = True, read_notes: bool = True
) -> BaseStorage:
    """Open the storage behind ``url`` (creating a database's tables if needed).

    ``heartbeat`` is the seconds between a running trial's heartbeats (RDB storages only; ``None``
    for commands that only read). Reading commands pass ``create=False``: a missing SQLite or
    journal file is then an error instead of a new empty one left behind.

    Workers pass ``read_notes=False``. optuna-dashboard keeps every trial's note as study system
    attributes, and NSGA-II reads all of those on every trial: with the notes that read grows
    with the study (most of a trial's orchestration time at 5 000 trials). A worker writes notes
    but never reads them, so on RDB storages its reads leave them out.
    """
    url = storage_url(url)
    kind = scheme(url)
    try:
        with quiet_experimental():
            if kind == "grpc":
                return _open_grpc(url)
            if kind == "journal":
                return _open_journal(url, create)
            try:
                parsed = make_url(url)
            except sqlalchemy.exc.ArgumentError:
                raise StorageError(
                    f"storage URL {redact(url)!r} is not a storage URL; expected e.g. {DEFAULT_STORAGE}, "
                    "postgresql+psycopg://user@host/db, grpc://host:port or journal:///path/file"
                ) from None
            engine_kwargs = _prepare_sqlite(parsed, create) if kind == "sqlite" else {"pool_pre_ping": True}
            kwargs: dict[str, Any] = {}
            if heartbeat:
                kwargs = {
                    "heartbeat_interval": max(1, round(heartbeat)),
                    "grace_period": max(2, round(3 * heartbeat)),
                    "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                }
            for attempt in range(3):
                try:
                    return ResilientRDBStorage(url, read_notes, engine_kwargs=engine_kwargs, **kwargs)
                except sqlalchemy.exc.DBAPIError as exc:
                    if attempt == 2 or not lost_creation_race(exc):
                        raise
                    time.sleep(0.5 + random.random())
    except StorageError:
        raise
    except Exception as exc:  # drivers raise many types; all mean "cannot use this storage"
        reason = _scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, url)
        raise StorageError(f"cannot open storage {redact(url)}: {reason}") from None


def lost_creation_race(exc: sqlalchemy.exc.DBAPIError) -> bool:
    """Workers that start together on a fresh database race to create its tables and its schema
    version row; the losers find them made on a second look. Anything else (a wrong password, no
    server) is not retried."""
    message = str(exc).lower()
    # "already exists", PostgreSQL's "duplicate key", SQLite's "UNIQUE constraint failed", "locked".
    return any(w in message for w in ("already exists", "duplicate", "unique constraint", "locked"))


def _open_grpc(url: str) -> BaseStorage:
    from optuna.storages import GrpcStorageProxy

    parsed = make_url(url)
    if not parsed.host or not parsed.port:
        raise StorageError(f"storage URL {url!r}: expected grpc://host:port (a `nasopt storage-proxy`)")
    proxy = GrpcStorageProxy(host=parsed.host, port=parsed.port)
    try:
        proxy.get_all_studies()  # a missing server fails here, in one line, not in the first trial
    except Exception:
        raise StorageError(
            f"no storage proxy answers at {parsed.host}:{parsed.port}; start one with "
            f"`nasopt storage-proxy --storage DATABASE_URL --port {parsed.port}` on {parsed.host}"
        ) from None
    return proxy


def _open_journal(url: str, create: bool) -> BaseStorage:
    path = storage_file(url)
    if path is None or not path.name:
        raise StorageError(f"storage URL {url!r}: expected journal:///relative/file or journal:////absolute/file")
    if not create and not path.is_file():
        raise StorageError(
            f"no study journal at {path}; run `nasopt search` with this storage first, or pass --storage"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise StorageError(f"cannot open journal storage {path}: {exc.strerror or exc}") from None


def _prepare_sqlite(parsed: sqlalchemy.URL, create: bool = True) -> dict[str, Any]:
    """Create the folder, switch the file to WAL (persistent) and set a busy timeout."""
    db = parsed.database
    if db and db != ":memory:":
        path = Path(db)
        if not create and not path.is_file():
            raise StorageError(f"no study database at {path}; run `nasopt search` here first, or pass --storage")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(path, timeout=60) as con:
                # WAL lets readers (the dashboard) and one writer work at once.
                con.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open SQLite storage {path}: {exc}") from None
    return {"connect_args": {"timeout": 60}}


def default_artifacts(url: str) -> str:
    """Beside a SQLite or journal file (``artifacts``, relative to its folder: the two move
    together); for a server storage an absolute ``storage/artifacts`` under this folder."""
    return "artifacts" if storage_file(url) is not None else str(Path("storage/artifacts").resolve())


def resolve_artifacts(location: str, url: str) -> str:
    """A recorded location as this host reads it: relative ones are relative to the storage file."""
    if location.startswith("s3://") or Path(location).is_absolute():
        return location
    file = storage_file(url)
    return str(((file.parent if file is not None else Path.cwd()) / location).resolve())


def open_artifact_store(where: str, create: bool = False) -> FileSystemArtifactStore | Boto3ArtifactStore:
    """The artifact store at ``where`` (a folder, or ``s3://bucket``; see :func:`resolve_artifacts`)."""
    if where.startswith("s3://"):
        bucket, _, prefix = where[len("s3://") :].partition("/")
        if prefix:
            raise ConfigError(
                f"--artifacts {where}: Optuna's Boto3ArtifactStore takes a bucket, s3://BUCKET, no prefix"
            )
        try:
            return Boto3ArtifactStore(bucket)
        except ImportError:
            raise StorageError(f"artifacts at {where} need boto3: pip install boto3") from None
    path = Path(where)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the artifact folder {path}: {exc.strerror or exc}") from None
    elif not path.is_dir():
        raise StorageError(
            f"this study's artifacts are in {path}, which this host cannot reach; mount that folder here"
        )
    return FileSystemArtifactStore(str(path))


def artifact_location(study: optuna.Study, url: str | None = None) -> str:
    """Where ``study``'s artifacts are, as this host reads it (the default location for studies
    made before it was recorded)."""
    url = storage_url(url)
    return resolve_artifacts(study.user_attrs.get(ARTIFACTS_ATTR) or default_artifacts(url), url)


def study_artifacts(
    study: optuna.Study, url: str | None = None, create: bool = False
) -> FileSystemArtifactStore | Boto3ArtifactStore:
    """The artifact store recorded on ``study``."""
    return open_artifact_store(artifact_location(study, url), create)


def make_fidelity(cfg: StudyConfig) -> MOASHA | None:
    """The study file's early-stopping strategy, or ``None`` (every trial trains to the full budget)."""
    # A budget too short for a first rung (a smoke run's one epoch) trains every trial fully.
    if cfg.fidelity.strategy == "moasha" and cfg.fidelity.min_epochs < cfg.train.epochs:
        return MOASHA(cfg.fidelity.min_epochs, cfg.train.epochs, cfg.fidelity.reduction_factor)
    return None


def create_or_load(
    name: str,
    cfg: StudyConfig,
    storage: BaseStorage,
    sampler: optuna.samplers.BaseSampler,
    url: str | None = None,
    artifacts: str | None = None,
) -> optuna.Study:
    """Create the study, or load it when it exists; the config must match the one it was made with.

    A new study records where its artifacts go (``artifacts``, else :func:`default_artifacts`),
    so every reader on any host finds them without a flag.
    """
    directions = [DIRECTIONS[o] for o in cfg.study.objectives]
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, directions=directions, load_if_exists=True
        )
    except ValueError as exc:
        raise ConfigError(f"study {name!r}: {exc}") from None
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is None:
        with quiet_experimental():
            study.set_metric_names(list(cfg.study.objectives))
        study.set_user_attr(CONFIG_ATTR, cfg.model_dump_json())
        study.set_user_attr(FINGERPRINT_ATTR, cfg.fingerprint())
        location = default_artifacts(storage_url(url)) if artifacts is None else _absolute(artifacts)
        study.set_user_attr(ARTIFACTS_ATTR, location)
    elif stored != cfg.fingerprint():
        raise ConfigError(
            f"study {name!r} was created with a different configuration; run it with the same study "
            "file and --set values, or pick a new --study name"
        )
    elif artifacts is not None and (recorded := study.user_attrs.get(ARTIFACTS_ATTR)) != _absolute(artifacts):
        raise ConfigError(
            f"--artifacts {artifacts}: study {name!r} keeps its artifacts in {recorded}; drop --artifacts"
        )
    return study


def _absolute(location: str) -> str:
    return location if location.startswith("s3://") else str(Path(location).resolve())


def dashboard_artifacts(
    storage: BaseStorage, url: str, name: str | None = None
) -> FileSystemArtifactStore | Boto3ArtifactStore:
    """The one artifact store of the studies in ``storage`` (or of study ``name``), for the dashboard."""
    studies = [s for s in storage.get_all_studies() if name is None or s.study_name == name]
    if name is not None and not studies:
        raise ConfigError(f"--study {name}: no such study in {redact(url)}")
    where = {resolve_artifacts(s.user_attrs.get(ARTIFACTS_ATTR) or default_artifacts(url), url) for s in studies}
    if len(where) > 1:
        raise ConfigError(
            f"the studies here keep their artifacts apart ({', '.join(sorted(where))}); pick one: --study"
        )
    location = where.pop() if where else resolve_artifacts(default_artifacts(url), url)
    return open_artifact_store(location, create=not studies)


def load_study(name: str, storage: BaseStorage) -> tuple[optuna.Study, StudyConfig]:
    """An existing study and the config it was created with."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise ConfigError(f"no study named {name!r} in this storage (studies here: {names})") from None
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise ConfigError(f"study {name!r} was not created by nasopt (no {CONFIG_ATTR} attribute)")
    return study, config_from_json(raw)


def completed_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
