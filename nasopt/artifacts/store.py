"""Where a study's artifacts (weights, predictions, figures) live, and the store that holds them.

A new study records the location (``nasopt_artifacts``), so every reader on any host finds them
without a flag: beside a SQLite or journal file, else an absolute folder, or ``s3://bucket``.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore, download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import BaseStorage

from nasopt.errors import ConfigError, DataError, StorageError
from nasopt.storages.url import redact, storage_file, storage_url

ARTIFACTS_ATTR = "nasopt_artifacts"


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


def absolute_location(location: str) -> str:
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


def fetch_artifact(
    store: FileSystemArtifactStore, artifact_id: str | None, dest: Path, what: str, trial: int, where: str
) -> Path:
    """Download one of a trial's artifacts to ``dest``; a missing one is one line naming the folder."""
    if artifact_id is None:
        raise DataError(f"trial {trial}: no {what} artifact recorded; it was searched without an artifact store")
    try:
        download_artifact(artifact_store=store, file_path=str(dest), artifact_id=artifact_id)
    except (ArtifactNotFound, FileNotFoundError):
        raise DataError(
            f"trial {trial}: its {what} (artifact {artifact_id}) are missing from the artifact store {where}; "
            "the study records that folder; restore the file there"
        ) from None
    return dest
