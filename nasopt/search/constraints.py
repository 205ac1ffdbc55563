"""The study file's [constraints]: hard budgets that the samplers see through ``constraints_func``.

Parameters, FLOPs and latency are all known before training, so the objective checks a network
against its budgets first and does not train one that is over: the trial completes at once,
infeasible, with its violation recorded (:attr:`Key.OVER_BUDGET`). NSGA-II, NSGA-III and TPE rank
infeasible trials below feasible ones by how far over they are, so they learn from it; Optuna's
``best_trials`` and optuna-dashboard show feasible trials only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from optuna.trial import FrozenTrial

from nasopt.artifacts.record import Key
from nasopt.config.schema import CONSTRAINT_FIELDS, SpaceSection, StudyConfig
from nasopt.errors import ConfigError
from nasopt.inference.latency import measure
from nasopt.model import Architecture, build_network, count_flops, count_params

FIELDS = CONSTRAINT_FIELDS  # each budget's study-file key, by the trial attribute it bounds


def violations(values: dict[str, float], limits: dict[str, float]) -> list[float]:
    """One value per budget, relative so that budgets of different units weigh alike:
    ``value / limit - 1``, feasible when <= 0 (Optuna's convention). A value not measured (the
    latency of a network already over another budget) counts 0."""
    return [values[key] / limit - 1.0 if key in values else 0.0 for key, limit in limits.items()]


def constraints_func(limits: dict[str, float]) -> Callable[[FrozenTrial], Sequence[float]]:
    """For the samplers: a finished trial's violations, from the attributes the objective recorded."""

    def func(trial: FrozenTrial) -> Sequence[float]:
        return violations({key: float(trial.user_attrs[key]) for key in limits if key in trial.user_attrs}, limits)

    return func


def over(values: dict[str, float], limits: dict[str, float]) -> dict[str, list[float]]:
    """The budgets ``values`` exceed: {key: [value, limit]}."""
    return {key: [values[key], limit] for key, limit in limits.items() if key in values and values[key] > limit}


def describe(over_limits: dict[str, list[float]]) -> str:
    """``params 100,292 > max_params 100,000``: what :func:`over` found, for notes and progress lines."""
    return ", ".join(f"{key} {value:,.6g} > {FIELDS[key]} {limit:,.6g}" for key, (value, limit) in over_limits.items())


def smallest(space: SpaceSection) -> Architecture:
    """The space's smallest network in parameters and FLOPs: the fewest blocks, the narrowest
    width, CBAM off where the space allows; extra blocks that total_depth asks for go to the last
    stages, where the volume is smallest."""
    lo, hi = space.blocks_per_stage
    blocks = [lo] * space.stages
    for s in reversed(range(space.stages)):
        while sum(blocks) < space.total_depth[0] and blocks[s] < hi:
            blocks[s] += 1
    cbam = False not in space.cbam  # on only where the space has no networks without it
    return Architecture(
        stages=tuple((min(space.widths),) * n for n in blocks),
        cbam_stem=cbam,
        cbam_stages=(cbam,) * space.stages,
        margin=min(space.margins),
        stem_width=space.stem_width,
    )


def check_reachable(cfg: StudyConfig, device: torch.device) -> None:
    """A budget that even the space's smallest network exceeds: one line naming it, before any study exists."""
    limits = cfg.constraints.limits()
    if not limits:
        return
    arch = smallest(cfg.space)
    values: dict[str, float] = {Key.PARAMS: count_params(build_network(arch))}
    if Key.FLOPS in limits:
        values[Key.FLOPS] = count_flops(arch, cfg.train.input_size)
    if Key.LATENCY in limits:
        values[Key.LATENCY] = measure(build_network(arch), cfg.train.input_size, device, cfg.train.channels_last).ms[1]
    for key, (value, limit) in over(values, limits).items():
        raise ConfigError(
            f"constraints.{FIELDS[key]} = {limit:g}: no network of the space meets it (the smallest, "
            f"{arch.summary()}, has {key} {value:,.6g}); raise it or shrink [space]"
        )
