"""Bad input: one clear line per item, then either stop (DataError) or skip and report.

A reader that finds an unusable file or scan raises :class:`BadItem` (the item and why).
Every real-data source funnels its problems through :class:`SkipReport`. Without
``skip_bad`` the first problem is a :class:`~nasopt.errors.DataError` whose message names the
file and what is wrong (the CLI prints it as one line and exits non-zero). With ``skip_bad``
the item is skipped, the same line is printed as a warning, and the run ends with a JSON
report listing every skipped item, written atomically next to the cache.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasopt.atomic import atomic_write
from nasopt.errors import DataError


class BadItem(Exception):
    """One input item (file or scan) is unusable: ``item`` names it, ``reason`` says why."""

    def __init__(self, item: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{item}: {reason}")
        self.item = str(item)
        self.reason = reason


@dataclass
class SkipReport:
    """Skipped items and reasons for one preparation run."""

    source: str
    skip_bad: bool = False
    echo: bool = True
    items: list[dict[str, str]] = field(default_factory=list)

    def bad(self, item: str | os.PathLike[str], reason: str) -> None:
        """Record a bad ``item``; raises DataError unless the run skips bad input."""
        line = f"{item}: {reason}"
        if not self.skip_bad:
            raise DataError(f"{line} (or pass --skip-bad to skip it and list it in a report)")
        self.items.append({"item": str(item), "reason": reason})
        if self.echo:
            print(f"skipped {line}", file=sys.stderr)

    def write(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``{"source", "skipped": [{item, reason}], ...extra}`` as JSON, atomically."""
        path = Path(path)
        payload = {"source": self.source, "skipped": self.items, **(extra or {})}
        with atomic_write(path) as tmp, open(tmp, "w") as handle:
            json.dump(payload, handle, indent=2)
        return path
