"""Warm starts: known architectures put into a study's queue with Optuna's ``enqueue_trial``.

Each network becomes the genes that :func:`nasopt.search.space.decode` turns back into exactly
that network. One the study's space cannot hold is refused in one line naming its slot, never
repaired into another network. Unused width slots are left out, so the sampler fills them.
"""

from __future__ import annotations

import gzip
import json
import tomllib
from pathlib import Path
from typing import Any

import optuna

from nasopt.artifacts.record import Key, trained
from nasopt.config.schema import SpaceSection
from nasopt.errors import ConfigError
from nasopt.model.architecture import Architecture


def genes(arch: Architecture, space: SpaceSection, lr: float | None = None, batch: int | None = None) -> dict:
    """The trial parameters that decode to ``arch`` in ``space``; a ConfigError names the first
    slot outside the space (``stages[s][b]``, ``cbam_stages[s]``, ``margin``, ...)."""
    lo, hi = space.blocks_per_stage

    def outside(slot: str, value: Any, key: str, allowed: Any) -> ConfigError:
        return ConfigError(f"{slot} = {value} is outside space.{key} {allowed}")

    if len(arch.stages) != space.stages:
        raise outside("the number of stages", len(arch.stages), "stages", space.stages)
    if arch.stem_width != space.stem_width:
        raise outside("stem_width", arch.stem_width, "stem_width", space.stem_width)
    if not space.total_depth[0] <= sum(map(len, arch.stages)) <= space.total_depth[1]:
        raise outside("the total depth", sum(map(len, arch.stages)), "total_depth", list(space.total_depth))
    params: dict[str, Any] = {}
    previous = 0
    for s, widths in enumerate(arch.stages):
        if not lo <= len(widths) <= hi:
            raise outside(f"the blocks of stages[{s}]", len(widths), "blocks_per_stage", [lo, hi])
        params[f"blocks_{s}"] = len(widths)
        for b, width in enumerate(widths):
            if width not in space.widths:
                raise outside(f"stages[{s}][{b}]", width, "widths", space.widths)
            if width < previous:  # decode sorts widths: this network would come back as another
                raise ConfigError(f"stages[{s}][{b}] = {width} is narrower than the block before ({previous})")
            params[f"width_{s}_{b}"] = previous = width
        if arch.cbam_stages[s] not in space.cbam:
            raise outside(f"cbam_stages[{s}]", arch.cbam_stages[s], "cbam", space.cbam)
        params[f"cbam_{s}"] = arch.cbam_stages[s]
    if arch.cbam_stem not in space.cbam:
        raise outside("cbam_stem", arch.cbam_stem, "cbam", space.cbam)
    if arch.margin not in space.margins:
        raise outside("margin", arch.margin, "margins", space.margins)
    params |= {"cbam_stem": arch.cbam_stem, "margin": arch.margin}
    if lr is not None:
        if not space.lr[0] <= lr <= space.lr[1]:
            raise outside("lr", lr, "lr", list(space.lr))
        params["lr"] = lr
    if batch is not None:
        if batch not in space.batch_sizes:
            raise outside("batch_size", batch, "batch_sizes", space.batch_sizes)
        params["batch_size"] = batch
    return params


#: The keys of a ``[[network]]`` table.
NETWORK_KEYS = {"name", "stages", "cbam_stem", "cbam_stages", "margin", "lr", "batch_size"}


def read_networks(path: str | Path, space: SpaceSection) -> dict[str, dict[str, Any]]:
    """``[[network]]`` tables of ``path`` (``name``, ``stages``, ``cbam_stem``, ``cbam_stages``,
    ``margin``; ``lr`` and ``batch_size`` optional), as genes by name. Every network is checked
    before any is returned, so a bad file enqueues nothing."""
    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text()).get("network", [])
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; see studies/known-networks.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if not tables:
        raise ConfigError(f"{path}: no [[network]] tables; see studies/known-networks.toml")
    found: dict[str, dict[str, Any]] = {}
    for i, table in enumerate(tables):
        name = str(table.get("name", f"network {i}"))
        where = f"{path}: network {name!r}"
        if unknown := sorted(set(table) - NETWORK_KEYS):
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; a network has {', '.join(sorted(NETWORK_KEYS))}")
        try:
            arch = Architecture.from_dict({"stem_width": space.stem_width, **table})
            found[name] = genes(arch, space, table.get("lr"), table.get("batch_size"))
        except KeyError as exc:
            raise ConfigError(f"{where}: missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}; widen the study's space or drop this network") from None
    return found


def from_study(other: optuna.Study, space: SpaceSection, front: bool = False) -> dict[str, dict[str, Any]]:
    """The trained trials of study ``other`` (its feasible Pareto front with ``front``), as genes
    by name, each with its trial's lr and batch size; checked as :func:`read_networks` checks."""
    trials = other.best_trials if front else trained(other)
    if not trials:
        raise ConfigError(f"--from-study {other.study_name}: no trained trial to start from")
    found: dict[str, dict[str, Any]] = {}
    for t in trials:
        name = f"{other.study_name} trial {t.number}"
        try:
            arch = Architecture.from_dict(t.user_attrs[Key.ARCH])
            found[name] = genes(arch, space, t.params.get("lr"), t.params.get("batch_size"))
        except KeyError:
            raise ConfigError(f"--from-study {other.study_name}: trial {t.number} has no {Key.ARCH} record") from None
        except ConfigError as exc:
            raise ConfigError(f"--from-study: {name}: {exc}; widen the study's space or pass --front") from None
    return found


def from_table(path: str | Path, space: SpaceSection, top: int | None = None) -> dict[str, dict[str, Any]]:
    """The best rows of a tabular benchmark (``benchmarks/nasbench/*.json.gz``): its Pareto front of
    last-epoch validation accuracy against parameters, or with ``top`` its ``top`` most accurate
    rows; each as genes with its row's lr and batch size, checked as :func:`read_networks` checks."""
    try:
        with gzip.open(path, "rt") as f:
            rows = json.load(f)["rows"]
        scored = [(float(row["val_accuracy"][-1]), int(row["n_params"]), i) for i, row in enumerate(rows)]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ConfigError(
            f"--from-table {path}: not a nasopt tabular benchmark ({exc}); see benchmarks/nasbench/"
        ) from None
    if top is not None:
        chosen = [i for _, _, i in sorted(scored, key=lambda s: (-s[0], s[1], s[2]))[:top]]
    else:  # no row at least as accurate and as small, and better in one
        chosen = [
            i for a, n, i in scored if not any(a2 >= a and n2 <= n and (a2, n2) != (a, n) for a2, n2, _ in scored)
        ]
    found: dict[str, dict[str, Any]] = {}
    for i in chosen:
        row, name = rows[i], f"{Path(path).name} row {i}"
        try:
            arch = Architecture.from_dict(row["arch"])
            found[name] = genes(arch, space, row["params"].get("lr"), row["params"].get("batch_size"))
        except ConfigError as exc:
            raise ConfigError(f"--from-table: {name}: {exc}; widen the study's space") from None
    return found


def enqueue(study: optuna.Study, networks: dict[str, dict[str, Any]]) -> int:
    """Queue each network once (one already waiting or run with the same genes is skipped);
    returns how many were added. Each carries its name as the ``warm_start`` user attribute."""
    before = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    for name, params in networks.items():
        study.enqueue_trial(params, user_attrs={Key.WARM_START: name}, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))) - before
