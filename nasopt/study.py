"""Storage URLs, samplers, study creation and loading.

One study lives in one relational database that every worker shares. The default is a SQLite
file under ``storage/`` (WAL journal, busy timeout) for one host; PostgreSQL or MySQL URLs work
through the same Optuna RDB storage for a cluster. Passwords never reach logs or errors.
"""

from __future__ import annotations

import os
import sqlite3
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url

from nasopt.config import StudyConfig, config_from_json
from nasopt.errors import ConfigError, StorageError

DEFAULT_STORAGE = "sqlite:///storage/nasopt.db"
DIRECTIONS = {"val_accuracy": "maximize", "val_auc": "maximize", "params": "minimize", "flops": "minimize"}
CONFIG_ATTR = "nasopt_config"
FINGERPRINT_ATTR = "nasopt_config_fingerprint"


@contextmanager
def _quiet_experimental() -> Iterator[None]:
    """Optuna flags heartbeats, NSGA-III and metric names as experimental; nasopt relies on them
    knowingly, and the warnings would break the one-line output of the CLI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def storage_url(url: str | None = None) -> str:
    """The URL from the flag, else ``NASOPT_STORAGE``, else the SQLite default."""
    return url or os.environ.get("NASOPT_STORAGE") or DEFAULT_STORAGE


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def artifact_root(url: str) -> Path:
    """Where trial artifacts go: ``$NASOPT_ARTIFACTS`` (a folder all workers share), else beside
    a SQLite database (``storage/artifacts``), else ``storage/artifacts``."""
    env = os.environ.get("NASOPT_ARTIFACTS")
    if env:
        root = Path(env)
    else:
        parsed = make_url(url)
        db = parsed.database if parsed.get_backend_name() == "sqlite" else None
        root = Path(db).parent / "artifacts" if db and db != ":memory:" else Path("storage/artifacts")
    root.mkdir(parents=True, exist_ok=True)
    return root


def open_artifact_store(url: str | None = None) -> FileSystemArtifactStore:
    """The artifact store of the studies behind storage ``url``: where workers upload trial
    artifacts and where export and the dashboard fetch them (with Optuna's ``download_artifact``)."""
    return FileSystemArtifactStore(str(artifact_root(storage_url(url))))


def _scrub(text: str, url: str) -> str:
    try:
        password = make_url(url).password
    except Exception:
        password = None
    return text.replace(str(password), "***") if password else text


def open_storage(url: str | None = None, heartbeat: bool = True, create: bool = True) -> RDBStorage:
    """Open (creating tables if needed) the RDB storage behind ``url``.

    Heartbeats let a crashed worker's trials be marked failed and retried once by another.
    Commands that only read a study pass ``create=False``: a missing SQLite file is then an
    error instead of a new empty database left behind.
    """
    url = storage_url(url)
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"storage URL {redact(url)!r} is not a database URL; expected e.g. {DEFAULT_STORAGE} "
            "or postgresql+psycopg://user@host/db"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs = _prepare_sqlite(parsed, create)
    else:
        engine_kwargs = {"pool_pre_ping": True}
    kwargs: dict[str, Any] = {}
    try:
        with _quiet_experimental():
            if heartbeat:
                kwargs = {
                    "heartbeat_interval": 60,
                    "grace_period": 180,
                    "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1),
                }
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as exc:  # drivers raise many types; all mean "cannot use this storage"
        reason = _scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, url)
        raise StorageError(f"cannot open storage {redact(url)}: {reason}") from None


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


def make_sampler(name: str, cfg: StudyConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    seed = cfg.study.seed if seed is None else seed
    pop = cfg.study.population_size
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    if name == "nsga3":
        with _quiet_experimental():
            return optuna.samplers.NSGAIIISampler(population_size=pop, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"--sampler {name!r}: choose one of nsga2, nsga3, tpe, random")


def create_or_load(
    name: str, cfg: StudyConfig, storage: RDBStorage, sampler: optuna.samplers.BaseSampler
) -> optuna.Study:
    """Create the study, or load it when it exists; the config must match the one it was made with."""
    directions = [DIRECTIONS[o] for o in cfg.study.objectives]
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, directions=directions, load_if_exists=True
        )
    except ValueError as exc:
        raise ConfigError(f"study {name!r}: {exc}") from None
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is None:
        with _quiet_experimental():
            study.set_metric_names(list(cfg.study.objectives))
        study.set_user_attr(CONFIG_ATTR, cfg.model_dump_json())
        study.set_user_attr(FINGERPRINT_ATTR, cfg.fingerprint())
    elif stored != cfg.fingerprint():
        raise ConfigError(
            f"study {name!r} was created with a different configuration; run it with the same study "
            "file and --set values, or pick a new --study name"
        )
    return study


def load_study(name: str, storage: RDBStorage) -> tuple[optuna.Study, StudyConfig]:
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
