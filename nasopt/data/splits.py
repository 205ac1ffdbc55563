"""Outer folds and the search's train/validation split.

Folds group nodules by patient (no patient in two folds) and stratify by label. A source with
its own folds (LUNA16's subsets) keeps them. The test fold never enters the search: the search
trains on the remaining folds minus the validation fold and validates on that fold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from nasopt.data.noduleset import NoduleSet
from nasopt.errors import DataError

if TYPE_CHECKING:
    from nasopt.config.schema import StudyConfig


def outer_folds(ns: NoduleSet, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold id (0..n_folds-1) of every nodule."""
    from sklearn.model_selection import StratifiedGroupKFold  # a second to import: only here

    if ns.folds is not None:
        return np.asarray(ns.folds)
    counts = np.bincount(ns.labels, minlength=2)
    n_patients = len(np.unique(ns.patients))
    if n_patients < n_folds or counts.min() < n_folds:
        raise DataError(
            f"{ns.source} data: {n_patients} patients and {counts.tolist()} benign/malignant nodules "
            f"are too few for {n_folds} folds; prepare more scans or lower split.n_folds"
        )
    folds = np.empty(len(ns), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, idx) in enumerate(splitter.split(np.zeros(len(ns)), ns.labels, ns.patients)):
        folds[idx] = k
    return folds


def check_named_splits(ns: NoduleSet, test_fold: int, val_fold: int) -> None:
    """A source with named splits (NoduleMNIST3D's train/val/test) must be searched on them."""
    named = ns.params.get("splits")
    if named and (test_fold, val_fold) != (named["test"], named["val"]):
        raise DataError(
            f"{ns.source} data has fixed splits {named}; set split.test_fold={named['test']} and "
            f"split.val_fold={named['val']}"
        )


def search_split(folds: np.ndarray, test_fold: int, val_fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices for the search; the test fold is in neither."""
    if test_fold == val_fold:
        raise DataError("split: val_fold must differ from test_fold")
    present = set(np.unique(folds).tolist())
    for name, k in (("test_fold", test_fold), ("val_fold", val_fold)):
        if k not in present:
            raise DataError(f"split: {name} {k} is not one of the data's folds {sorted(present)}")
    train = np.flatnonzero((folds != test_fold) & (folds != val_fold))
    val = np.flatnonzero(folds == val_fold)
    return train, val


class StudySets(NamedTuple):
    """The three parts of a study's data: the search trains on ``train`` and validates on
    ``val``; ``test`` is the held-out outer fold that only ``evaluate`` sees."""

    train: NoduleSet
    val: NoduleSet
    test: NoduleSet


def study_sets(cfg: StudyConfig, ns: NoduleSet) -> StudySets:
    """Split ``ns`` as the study ``cfg`` says (outer folds, then test and validation folds)."""
    check_named_splits(ns, cfg.split.test_fold, cfg.split.val_fold)
    folds = outer_folds(ns, cfg.split.n_folds, cfg.split.seed)
    train, val = search_split(folds, cfg.split.test_fold, cfg.split.val_fold)
    return StudySets(ns.subset(train), ns.subset(val), ns.subset(np.flatnonzero(folds == cfg.split.test_fold)))
