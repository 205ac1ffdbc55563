"""From a study's [data] section to a cached NoduleSet: find the cache, or prepare it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from nasopt.config import DataSection
from nasopt.data.noduleset import NoduleSet
from nasopt.errors import DataError

REAL_SOURCES = {
    "lidc": "--dicom-root DIR",
    "luna16": "--luna-root DIR",
    "nodulemnist3d": "--npz FILE",
}
#: The DataSection field that holds each real source's input.
REAL_INPUTS = {"lidc": "dicom_root", "luna16": "luna_root", "nodulemnist3d": "npz"}


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
    return Path(data.cache_dir) / f"{data.source}-{real_cache_key(data)}.safetensors"


def real_cache_key(data: DataSection) -> str:
    """Short hash of what determines a real source's output (not where its files live)."""
    from nasopt.data.lidc import LIDC_VERSION
    from nasopt.data.luna16 import LUNA16_VERSION
    from nasopt.data.nodulemnist3d import NODULEMNIST3D_VERSION

    payload: dict = {"source": data.source, "crop_size": data.crop_size}
    if data.source == "nodulemnist3d":
        payload["version"] = NODULEMNIST3D_VERSION  # MedMNIST's own labels: no reader policy
    else:
        payload.update(min_readers=data.min_readers, ambiguous=data.ambiguous)
        payload["version"] = LIDC_VERSION if data.source == "lidc" else LUNA16_VERSION
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def skip_report_path(cache: Path) -> Path:
    """Where a --skip-bad run lists what it skipped: next to the cache."""
    return cache.with_name(cache.name.removesuffix(".safetensors") + ".skipped.json")


def prepare(
    data: DataSection, workers: int = 1, progress: bool = True, force: bool = False, skip_bad: bool = False
) -> tuple[NoduleSet, Path]:
    """Prepare ``data``'s source into its cache, or load the cache when it is already there."""
    path = cache_path(data)
    if path.is_file() and not force:
        return NoduleSet.load(path), path
    if data.source == "phantom":
        from nasopt.data.phantom import build_phantom

        ns = build_phantom(_phantom_params(data, workers), progress=progress)
    else:
        ns = _build_real(data, workers, progress, skip_bad, skip_report_path(path))
    ns.save(path)  # atomic: a run that failed above leaves no cache behind
    return ns, path


def _build_real(data: DataSection, workers: int, progress: bool, skip_bad: bool, report: Path) -> NoduleSet:
    from nasopt.data.labels import LabelPolicy

    where = getattr(data, REAL_INPUTS[data.source])
    if where is None:
        raise DataError(
            f"--source {data.source} needs {REAL_SOURCES[data.source]} "
            f"(or data.{REAL_INPUTS[data.source]} in the study file)"
        )
    common = dict(crop_size=data.crop_size, workers=workers, skip_bad=skip_bad, progress=progress, report_path=report)
    policy = LabelPolicy(min_readers=data.min_readers, ambiguous=data.ambiguous)
    if data.source == "lidc":
        from nasopt.data.lidc import prepare_lidc

        return prepare_lidc(where, policy=policy, **common)
    if data.source == "luna16":
        from nasopt.data.luna16 import prepare_luna16

        return prepare_luna16(where, policy=policy, **common)
    from nasopt.data.nodulemnist3d import prepare_nodulemnist3d

    return prepare_nodulemnist3d(where, **common)


def load_data(data: DataSection, progress: bool = True) -> NoduleSet:
    """The NoduleSet a study trains on. The phantom, the embedded default, is prepared on first
    use; a real-data source must have been prepared with ``nasopt data prepare``."""
    path = cache_path(data)
    if path.is_file():
        return NoduleSet.load(path)
    if data.source == "phantom":
        return prepare(data, progress=progress)[0]
    raise DataError(
        f"{path}: no prepared {data.source} data; run `nasopt data prepare --source {data.source} "
        f"{REAL_SOURCES[data.source]}` first"
    )
