"""NoduleSet: the one shape every data source ends in, and its on-disk cache.

A NoduleSet holds int16 HU crops at 1 mm isotropic spacing (cubes larger than the network
input, so training can crop at random) plus one metadata record per nodule. The cache is a
single safetensors file: crops and labels as tensors, metadata as JSON in the header, so
loading never unpickles and the file can be memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from nasopt.atomic import atomic_write
from nasopt.errors import DataError

#: Bumped whenever the cache layout changes (a source's output has its version in sources.py).
CACHE_FORMAT = 1

#: Default edge of the stored crops in mm (= voxels): the network's 32³ input plus room for
#: random shifts. The study file's ``data.crop_size`` and every source default to it.
CROP_SIZE = 48


@dataclass
class NoduleSet:
    """Nodule crops with labels and per-nodule metadata.

    Attributes:
        crops: int16 array (N, S, S, S) of HU values, 1 mm isotropic, nodule at the centre.
        labels: int64 array (N,), 0 benign, 1 malignant.
        meta: one dict per nodule; always has ``patient`` (str), ``scan`` (str) and
            ``nodule`` (str); sources add centroid, diameter, readers, ratings, spacing.
        source: the source name (``phantom``, ``lidc``, ``luna16``, ``nodulemnist3d``).
        params: the parameters the set was prepared with (recorded in the cache).
        folds: predefined outer folds (N,) where the source has them (LUNA16 subsets), else None.
    """

    crops: np.ndarray
    labels: np.ndarray
    meta: list[dict[str, Any]]
    source: str
    params: dict[str, Any] = field(default_factory=dict)
    folds: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.crops.ndim != 4 or self.crops.shape[0] != n or len(self.meta) != n:
            raise DataError(
                f"NoduleSet: crops {self.crops.shape}, labels ({n},) and meta ({len(self.meta)}) "
                "must agree on the number of nodules and crops must be (N, S, S, S)"
            )
        if self.folds is not None and len(self.folds) != n:
            raise DataError(f"NoduleSet: folds has {len(self.folds)} entries for {n} nodules")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def patients(self) -> np.ndarray:
        """Patient id per nodule (the grouping key of every split)."""
        return np.array([m["patient"] for m in self.meta])

    @property
    def crop_size(self) -> int:
        return int(self.crops.shape[1])

    def fingerprint(self) -> str:
        """Short sha256 of the crops, labels, folds and nodule names: the identity of the data a
        search ran on, recorded in exported ensembles."""
        h = hashlib.sha256()
        for array in (self.crops, self.labels, self.folds):
            if array is not None:
                h.update(np.ascontiguousarray(array).tobytes())
        h.update(json.dumps([m["nodule"] for m in self.meta]).encode())
        return h.hexdigest()[:16]

    def subset(self, index: np.ndarray) -> NoduleSet:
        """The nodules at ``index``, in that order."""
        index = np.asarray(index)
        return NoduleSet(
            crops=self.crops[index],
            labels=self.labels[index],
            meta=[self.meta[i] for i in index],
            source=self.source,
            params=self.params,
            folds=None if self.folds is None else self.folds[index],
        )

    def save(self, path: str | Path) -> Path:
        """Write the cache atomically: a temp file in the same folder, then a rename."""
        path = Path(path)
        tensors = {
            "crops": np.ascontiguousarray(self.crops, dtype=np.int16),
            "labels": np.ascontiguousarray(self.labels, dtype=np.int64),
        }
        if self.folds is not None:
            tensors["folds"] = np.ascontiguousarray(self.folds, dtype=np.int64)
        header = {
            "format": str(CACHE_FORMAT),
            "source": self.source,
            "params": json.dumps(self.params, sort_keys=True),
            "meta": json.dumps(self.meta),
        }
        with atomic_write(path) as tmp:
            save_file(tensors, tmp, metadata=header)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NoduleSet:
        """Read a cache written by :meth:`save`; a wrong or damaged file is a DataError."""
        path = Path(path)
        header = _header(path)
        try:
            tensors = load_file(path)
        except Exception as exc:  # safetensors raises several types for damaged files
            raise _unreadable(path, exc) from exc
        return cls(
            crops=tensors["crops"],
            labels=tensors["labels"],
            meta=json.loads(header["meta"]),
            source=header["source"],
            params=json.loads(header["params"]),
            folds=tensors.get("folds"),
        )


def cached_params(path: str | Path) -> dict[str, Any]:
    """The ``params`` a cache was prepared with, read from its header alone (no crops)."""
    return json.loads(_header(Path(path))["params"])


def _header(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DataError(f"{path}: no such data cache; run `nasopt data prepare` first")
    try:
        with safe_open(path, framework="numpy") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise _unreadable(path, exc) from exc
    if header.get("format") != str(CACHE_FORMAT):
        raise DataError(
            f"{path}: cache format {header.get('format')!r}, this nasopt reads {CACHE_FORMAT}; "
            "delete it and prepare again"
        )
    return header


def _unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(f"{path}: not a readable nasopt data cache ({exc}); delete it and prepare again")
