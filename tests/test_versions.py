"""The suite runs on the versions constraints.txt holds, and those are inside pyproject's ranges."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    return {canonicalize_name(name): version for name, version in pins}


def test_the_installed_versions_are_the_locked_ones():
    locked = _locked()
    assert {"optuna", "optuna-dashboard", "sqlalchemy", "numpy", "monai"} <= locked.keys()
    installed = {name: importlib.metadata.version(name) for name in locked}
    assert installed == locked  # `make venv` installs from the lock; `make upgrade` moves both


def test_the_lock_is_inside_pyprojects_ranges_and_bounds_optuna_from_above():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    locked = _locked()
    for req in declared:
        name = canonicalize_name(req.name)
        if name != "torch":  # torch is the build TORCH_SPEC picks, not locked
            assert req.specifier.contains(locked[name], prereleases=True), f"{name}=={locked[name]} vs {req}"
    bounded = {canonicalize_name(r.name): r.specifier for r in declared}
    for name in ("optuna", "optuna-dashboard"):  # their private names are read in nasopt's storages
        assert any(s.operator == "<" for s in bounded[name]), f"{name} has no upper bound"
