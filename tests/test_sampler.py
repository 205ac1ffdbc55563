"""nasopt's NSGA-II and NSGA-III sample exactly what Optuna's do, reading the study once per trial."""

from __future__ import annotations

import optuna
import pytest

from nasopt.config.schema import load_config
from nasopt.errors import ConfigError
from nasopt.search.samplers import NSGAII, NSGAIII, make_sampler
from nasopt.storages.rdb import CREATION_KEY
from nasopt.storages.url import open_storage, quiet_experimental
from tests.conftest import DEMO


def _objective(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0, 1)
    n = trial.suggest_int("n", 1, 8)
    c = trial.suggest_categorical("c", ["a", "b", "c"])
    return x * n, n + (c == "a")


def _search(sampler: optuna.samplers.BaseSampler, url: str) -> tuple[list, list[int]]:
    """The trials' parameters and generations, and the trial-list reads each trial made."""
    storage = open_storage(url, heartbeat=None)
    study = optuna.create_study(storage=storage, sampler=sampler, directions=["maximize", "minimize"])
    backend, reads = study._storage._backend, []
    read = backend._get_trials

    def counted(*args, **kwargs):
        reads[-1] += 1
        return read(*args, **kwargs)

    backend._get_trials = counted
    for _ in range(30):
        reads.append(0)
        study.optimize(_objective, n_trials=1)
    backend._get_trials = read
    # Every trial also holds its creation token (nasopt's storage), different in each run.
    attrs = [{k: v for k, v in t.system_attrs.items() if k != CREATION_KEY} for t in study.trials]
    return [(t.params, a) for t, a in zip(study.trials, attrs)], reads


@pytest.mark.parametrize(
    "ours, optunas", [(NSGAII, optuna.samplers.NSGAIISampler), (NSGAIII, optuna.samplers.NSGAIIISampler)]
)
def test_the_same_trials_as_optunas_sampler_from_one_read_per_trial(ours, optunas, tmp_path, local_zone):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with quiet_experimental():  # NSGA-III is experimental in Optuna
        expected, optuna_reads = _search(optunas(population_size=4, seed=3), f"sqlite:///{tmp_path}/a.db")
        got, our_reads = _search(ours(population_size=4, seed=3), f"sqlite:///{tmp_path}/b.db")
    assert got == expected
    assert max(t[1][f"{optunas.__name__}:generation"] for t in got) >= 5  # parents chosen and reused many times
    # Each trial's ask reads the study once for waiting trials, and once for everything else.
    assert set(our_reads[5:]) == {2} and set(optuna_reads[5:]) == {4}


def test_make_sampler_names_each_sampler():
    cfg = load_config(DEMO)
    assert isinstance(make_sampler("nsga2", cfg), NSGAII)
    assert make_sampler("nsga2", cfg).population_size == cfg.study.population_size
    assert isinstance(make_sampler("nsga3", cfg), NSGAIII)
    assert isinstance(make_sampler("tpe", cfg), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("random", cfg), optuna.samplers.RandomSampler)
    with pytest.raises(ConfigError, match="--sampler 'cmaes': choose one of nsga2, nsga3, tpe, random"):
        make_sampler("cmaes", cfg)
