"""The search's samplers: NSGA-II (the default), NSGA-III, TPE and random, from the study file's name.

nasopt's NSGA-II and NSGA-III are Optuna's, reading the study once per trial. Optuna's read it
four times: the search space, the trial's generation and the parent population each fetched the
trial list again (each fetch a round of database queries), and the parent population re-read
every study system attribute. Here all three use the list the trial's ``ask`` read first
(Optuna's own per-trial cache, which its generation lookup already used), and a generation's
parents, fixed once chosen, are remembered. Sampling is unchanged: the same seed draws the
same trials (``tests/test_sampler.py``).
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import NSGAIIISampler, NSGAIISampler
from optuna.trial import FrozenTrial

from nasopt.config.schema import SAMPLERS, StudyConfig
from nasopt.errors import ConfigError
from nasopt.search.constraints import constraints_func
from nasopt.storages.url import quiet_experimental


class _OneReadPerTrial:
    """Overrides for Optuna's genetic samplers (mixed in before them)."""

    _search_space: optuna.search_space.IntersectionSearchSpace

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parent_ids: dict[int, list[int]] = {}  # generation -> its parents' trial ids

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        # Optuna's, from the trial's cached list; single-valued distributions are sampled
        # independently (Optuna's transform cannot untransform them).
        space = self._search_space.calculate(study, use_cache=True)
        return {name: d for name, d in space.items() if not d.single()}

    def get_parent_population(self, study: optuna.Study, generation: int) -> list[FrozenTrial]:
        if generation == 0:
            return []
        ids = self._parent_ids.get(generation)
        if ids is None:
            key = self._get_parent_cache_key_prefix() + str(generation)  # type: ignore[attr-defined]
            ids = study._storage.get_study_system_attrs(study._study_id).get(key)
            if ids is None:  # this worker is the first to need them: choose and share them
                parents = self.select_parent(study, generation)  # type: ignore[attr-defined]
                self._parent_ids[generation] = [t._trial_id for t in parents]
                study._storage.set_study_system_attr(study._study_id, key, self._parent_ids[generation])
                return parents
            self._parent_ids[generation] = ids
        wanted = set(ids)
        return [t for t in study._get_trials(deepcopy=False, use_cache=True) if t._trial_id in wanted]


class NSGAII(_OneReadPerTrial, NSGAIISampler):
    """Optuna's ``NSGAIISampler``, one study read per trial."""


class NSGAIII(_OneReadPerTrial, NSGAIIISampler):
    """Optuna's ``NSGAIIISampler``, one study read per trial."""


# Optuna names a genetic sampler's generation and parent keys after its class; keep Optuna's
# names, so studies run with Optuna's samplers and with these continue each other.
for _cls, _base in ((NSGAII, NSGAIISampler), (NSGAIII, NSGAIIISampler)):
    _cls._GENERATION_KEY = _base._GENERATION_KEY
    _cls._PARENT_CACHE_KEY_PREFIX = _base._PARENT_CACHE_KEY_PREFIX


def make_sampler(name: str, cfg: StudyConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    seed = cfg.study.seed if seed is None else seed
    pop = cfg.study.population_size
    limits = cfg.constraints.limits()
    if name not in SAMPLERS:
        raise ConfigError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    if name == "random":
        if limits:
            raise ConfigError("--sampler random: the study has [constraints], which Optuna's random sampler ignores")
        return optuna.samplers.RandomSampler(seed=seed)
    kwargs: dict[str, Any] = {"seed": seed}
    if limits:
        kwargs["constraints_func"] = constraints_func(limits)
    # constraints_func is deprecated since Optuna 5.0 for Trial.set_constraint, but it writes the
    # one constraint attribute that optuna-dashboard (<= 0.21) reads; set_constraint's it does not show.
    with quiet_experimental(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`constraints_func`", FutureWarning)
        if name == "nsga2":
            return NSGAII(population_size=pop, **kwargs)
        if name == "nsga3":
            return NSGAIII(population_size=pop, **kwargs)
        return optuna.samplers.TPESampler(multivariate=True, **kwargs)
