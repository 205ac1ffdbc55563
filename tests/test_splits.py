import numpy as np
import pytest

from nasopt.data.splits import outer_folds, search_split
from nasopt.errors import DataError
from tests.conftest import blob_set


def test_folds_group_patients_and_stratify_labels():
    ns = blob_set(n=300, side=8, per_patient=3)
    folds = outer_folds(ns, 10, seed=0)
    assert set(folds.tolist()) == set(range(10))
    for p in np.unique(ns.patients):
        assert len(set(folds[ns.patients == p].tolist())) == 1, "a patient in two folds"
    rate = ns.labels.mean()
    for k in range(10):
        assert abs(ns.labels[folds == k].mean() - rate) < 0.2
    assert np.array_equal(folds, outer_folds(ns, 10, seed=0))
    assert not np.array_equal(folds, outer_folds(ns, 10, seed=1))


def test_search_split_never_touches_the_test_fold():
    ns = blob_set(n=200, side=8)
    folds = outer_folds(ns, 5)
    train, val = search_split(folds, test_fold=0, val_fold=1)
    test = np.flatnonzero(folds == 0)
    assert len(test) and not set(test) & (set(train) | set(val))
    assert not set(train) & set(val)
    assert len(train) + len(val) + len(test) == len(ns)
    patients = ns.patients
    assert not set(patients[train]) & set(patients[val])


def test_predefined_folds_are_kept():
    ns = blob_set(n=40, side=8)
    ns.folds = np.arange(40) % 4
    assert np.array_equal(outer_folds(ns, 10), ns.folds)


def test_too_few_nodules_for_the_folds_is_a_clear_error():
    with pytest.raises(DataError, match="too few for 10 folds"):
        outer_folds(blob_set(n=12, side=8), 10)
    with pytest.raises(DataError, match="val_fold 7"):
        search_split(np.arange(20) % 5, 0, 7)
