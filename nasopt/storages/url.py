"""Opening a study storage by its URL.

One study lives in one storage that every worker shares, chosen by the URL's scheme:

* ``sqlite:///``, ``postgresql+psycopg://``, ``mysql+...``: Optuna's RDB storage (SQLite in WAL
  mode with a busy timeout for one host; a server database for a cluster). Connections are
  pre-pinged and calls that are safe to repeat are retried on transient database errors, so a database
  restart costs the workers a pause. Heartbeats mark a dead worker's trial failed and retry it.
* ``grpc://host:port``: Optuna's ``GrpcStorageProxy`` in front of a database served by
  ``nasopt storage-proxy``.
* ``journal:///path/file``: Optuna's ``JournalFileBackend``, for a shared file system without a
  database. Like ``sqlite:///``, three slashes start a relative path and four an absolute one.

Passwords never reach logs or errors.
"""

from __future__ import annotations

import logging
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
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy.engine import make_url

from nasopt.errors import StorageError
from nasopt.storages.rdb import ResilientRDBStorage

DEFAULT_STORAGE = "sqlite:///storage/nasopt.db"


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


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether running trials of ``storage`` send heartbeats (Optuna has no public test of it)."""
    return is_heartbeat_enabled(storage)


def quiet_trial_failures(expected: tuple[type[BaseException], ...]) -> None:
    """Optuna logs a trial that raised with its traceback (``optuna.study._optimize``'s logger).
    For the ``expected`` exceptions a worker prints its own one-line report instead."""

    class Expected(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not (record.exc_info and isinstance(record.exc_info[1], expected))

    logging.getLogger("optuna.study._optimize").addFilter(Expected())


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
