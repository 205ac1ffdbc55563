"""From a study's [data] section to a cached NoduleSet: find the cache, or prepare it."""

from __future__ import annotations

from pathlib import Path

from nasopt.config import DataSection
from nasopt.data.noduleset import NoduleSet
from nasopt.errors import DataError

REAL_SOURCES = {
    "lidc": "--dicom-root DIR",
    "luna16": "--luna-root DIR",
    "nodulemnist3d": "--npz FILE",
}


def _phantom_params(data: DataSection, workers: int = 1):  # -> PhantomParams
    from nasopt.data.phantom import PhantomParams

    return PhantomParams(
        seed=data.seed,
        max_scans=data.max_scans,
        crop_size=data.crop_size,
        min_readers=data.min_readers,
        ambiguous=data.ambiguous,
        workers=workers,
    )


def cache_path(data: DataSection) -> Path:
    """Where the cache for these data settings lives (its name encodes every parameter)."""
    if data.source == "phantom":
        from nasopt.data.phantom import phantom_cache_key

        return Path(data.cache_dir) / f"phantom-{phantom_cache_key(_phantom_params(data))}.safetensors"
    return Path(data.cache_dir) / f"{data.source}.safetensors"


def prepare_phantom(data: DataSection, workers: int = 1, progress: bool = True, force: bool = False) -> tuple[NoduleSet, Path]:
    """Build the LIDC phantom for ``data`` and cache it (reused when already there)."""
    from nasopt.data.phantom import build_phantom

    path = cache_path(data)
    if path.is_file() and not force:
        return NoduleSet.load(path), path
    ns = build_phantom(_phantom_params(data, workers), progress=progress)
    ns.save(path)
    return ns, path


def load_data(data: DataSection, progress: bool = True) -> NoduleSet:
    """The NoduleSet a study trains on. The phantom, the embedded default, is prepared on first
    use; a real-data source must have been prepared with ``nasopt data prepare``."""
    path = cache_path(data)
    if path.is_file():
        return NoduleSet.load(path)
    if data.source == "phantom":
        return prepare_phantom(data, progress=progress)[0]
    raise DataError(
        f"{path}: no prepared {data.source} data; run `nasopt data prepare --source {data.source} "
        f"{REAL_SOURCES[data.source]}` first"
    )
