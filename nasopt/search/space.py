"""The search space: an Optuna trial becomes an :class:`Architecture` plus training settings.

The genome has a fixed length: every slot (blocks per stage, a width for every possible block,
CBAM flags, margin, lr, batch size) is suggested on every trial, and unused slots are ignored
when decoding. That keeps NSGA-II's crossover and mutation acting on the whole space. Decoding
repairs the genome deterministically: too deep networks lose blocks from their deepest stages,
too shallow ones gain blocks in their shallowest, and widths are made non-decreasing through the
network by sorting them.
"""

from __future__ import annotations

from typing import Any

import optuna

from nasopt.artifacts.record import Key
from nasopt.config.schema import SpaceSection
from nasopt.model.architecture import Architecture
from nasopt.storages.writes import deferred_writes, set_user_attrs


def repair_depth(blocks: list[int], low: int, high: int) -> list[int]:
    """Move total depth into [low, high]: trim the deepest stage (last on ties), grow the shallowest."""
    blocks = list(blocks)
    while sum(blocks) > high:
        i = max(range(len(blocks)), key=lambda k: (blocks[k], k))
        blocks[i] -= 1
    while sum(blocks) < low:
        i = min(range(len(blocks)), key=lambda k: (blocks[k], k))
        blocks[i] += 1
    return blocks


def decode(params: dict[str, Any], space: SpaceSection) -> Architecture:
    """Genome (a trial's params) -> repaired Architecture."""
    lo, hi = space.blocks_per_stage
    blocks = repair_depth(
        [min(max(int(params[f"blocks_{s}"]), lo), hi) for s in range(space.stages)], *space.total_depth
    )
    # Sorting the active widths (rather than a running maximum) keeps the multiset of sampled
    # widths, so a wide first block does not make the whole network wide.
    widths = sorted(int(params[f"width_{s}_{min(b, hi - 1)}"]) for s, n in enumerate(blocks) for b in range(n))
    stages, start = [], 0
    for n in blocks:
        stages.append(tuple(widths[start : start + n]))
        start += n
    return Architecture(
        stages=tuple(stages),
        cbam_stem=bool(params["cbam_stem"]),
        cbam_stages=tuple(bool(params[f"cbam_{s}"]) for s in range(space.stages)),
        margin=int(params["margin"]),
        stem_width=space.stem_width,
    )


def suggest(trial: optuna.Trial, space: SpaceSection) -> tuple[Architecture, dict[str, Any]]:
    """Suggest every gene, decode, and record the architecture on the trial as ``arch``."""
    lo, hi = space.blocks_per_stage
    with deferred_writes(trial):  # the genes and the architecture: one commit
        for s in range(space.stages):
            trial.suggest_int(f"blocks_{s}", lo, hi)
            for b in range(hi):
                trial.suggest_categorical(f"width_{s}_{b}", space.widths)
            trial.suggest_categorical(f"cbam_{s}", space.cbam)
        trial.suggest_categorical("cbam_stem", space.cbam)
        trial.suggest_categorical("margin", space.margins)
        hparams = {
            "lr": trial.suggest_float("lr", *space.lr, log=True),
            "batch_size": trial.suggest_categorical("batch_size", space.batch_sizes),
        }
        arch = decode(trial.params, space)
        set_user_attrs(trial, {Key.ARCH: arch.to_dict(), Key.ARCH_SUMMARY: arch.summary()})
    return arch, hparams
