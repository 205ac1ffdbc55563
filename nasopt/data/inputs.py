"""A source's input on disk: checked to exist, listed, and identified for the cache key.

The identity of an input is what makes its cache: the same identity, the same crops.

* A file (NoduleMNIST3D's .npz): its size and the SHA-256 of its bytes.
* A folder (LIDC-IDRI DICOM, LUNA16): the sorted list of its files, each with its path relative
  to the folder, its size and its modification time. Only ``stat`` is called, never a byte
  read, so it stays cheap on LIDC-IDRI's 244,000 files (124 GB); touching or replacing any
  file changes it.

Where the input lies is not part of the identity: a moved or renamed input whose files are
unchanged keeps its cache. A copy that does not keep modification times (plain ``cp -r``)
is a new input.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nasopt.errors import DataError

InputKind = Literal["folder", "file"]


@dataclass(frozen=True)
class InputIdentity:
    """What a cache was prepared from: ``key`` goes into the cache name, the rest is recorded."""

    path: Path
    key: str
    summary: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """For the cache's params: where it was read (absolute; not part of the key) and what it was."""
        return {"path": os.path.abspath(self.path), "key": self.key, **self.summary}


def check_folder(path: str | os.PathLike[str], flag: str) -> Path:
    """``path`` as a Path if it is a folder holding something; else a DataError naming ``flag``."""
    path = Path(path)
    if path.is_file():
        raise DataError(f"{path}: {flag} must be a folder, this is a file; pass the folder holding the downloaded data")
    if not path.is_dir():
        raise DataError(f"{path}: {flag} folder does not exist; pass the folder holding the downloaded data")
    if not any(path.iterdir()):
        raise DataError(f"{path}: {flag} folder is empty; download the data into it first")
    return path


def check_file(path: str | os.PathLike[str], fix: str) -> Path:
    """``path`` as a Path if it is a file; else a DataError ending in ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}; {fix}")
    return path


def list_files(root: Path) -> list[Path]:
    """Every file under ``root``, sorted; hidden files (``.DS_Store``, ...) are left out."""
    return [p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")]


def identify(path: str | os.PathLike[str], kind: InputKind, flag: str, what: str) -> InputIdentity:
    """The identity of the ``kind`` input at ``path`` (see the module docstring); ``flag`` and
    ``what`` (what the input is) make the error when it is absent."""
    if kind == "folder":
        root = check_folder(path, flag)
        files = []
        total = 0
        for file in list_files(root):
            stat = file.stat()
            files.append([file.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns])
            total += stat.st_size
        return InputIdentity(root, short_hash(files), {"files": len(files), "bytes": total})
    file = check_file(path, f"{flag} takes {what}")
    with open(file, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    size = file.stat().st_size
    return InputIdentity(file, short_hash([size, digest]), {"bytes": size, "sha256": digest})


def short_hash(payload: Any) -> str:
    """16 hex digits of the SHA-256 of ``payload`` as canonical JSON: a stable cache-key part."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
