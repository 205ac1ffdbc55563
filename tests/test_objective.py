import numpy as np
import optuna
import torch

from nasopt.config.schema import load_config
from nasopt.model import Architecture, count_flops
from nasopt.search.objective import Objective
from nasopt.search.samplers import make_sampler
from nasopt.storages.study import create_or_load
from nasopt.storages.url import open_storage
from tests.conftest import blob_set


def test_flops_are_counted_and_grow_with_width():
    narrow = Architecture(((4,), (4,), (4,)), False, (False,) * 3, 1)
    wide = Architecture(((8,), (8,), (8,)), False, (False,) * 3, 1)
    # Stem alone: two 3x3x3 convs at 32^3 (1->4, 4->4) = 2 * 32^3 * 27 * (4 + 16) FLOPs.
    assert count_flops(narrow, 32) > 2 * 32**3 * 27 * 20
    assert count_flops(wide, 32) > count_flops(narrow, 32)


def test_three_objective_study_with_nsga3_in_sqlite(tmp_path):
    cfg = load_config(
        None,
        [
            'study.objectives=["val_auc", "params", "flops"]',
            "study.population_size=2",
            "train.epochs=1",
            "space.widths=[4, 8]",
            "space.batch_sizes=[8]",
            'train.precision="fp32"',
        ],
    )
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = create_or_load("three", cfg, storage, make_sampler("nsga3", cfg))
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    ns = blob_set(n=48, seed=4)
    objective = Objective(cfg, ns.subset(np.arange(32)), ns.subset(np.arange(32, 48)), torch.device("cpu"))
    study.optimize(objective, n_trials=3)
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.values == [t.user_attrs["val_auc"], t.user_attrs["params"], t.user_attrs["flops"]]
        assert t.user_attrs["flops"] == count_flops(Architecture.from_dict(t.user_attrs["arch"]), 32)
    # Reopening with the same config resumes; the stored config round-trips.
    from nasopt.storages.study import load_study

    again, stored = load_study("three", open_storage(f"sqlite:///{tmp_path}/s.db"))
    assert stored == cfg and len(again.trials) == 3
