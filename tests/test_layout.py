"""The layout's rules, read from every module's imports (ast), so a move that breaks them fails here.

- Data flows one way: the packages that hold the data, the network, its training, its evaluation
  and inference never import the search, the storages or the visualization.
- Another library's private names (``optuna.*._*``, ``optuna_dashboard._*``) are used only in
  ``nasopt/storages/``, where the version bounds and the differential tests are.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nasopt"
LOWER = ("model", "training", "data", "evaluation", "inference")
UPPER = ("search", "storages", "visualization")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module that ``path`` imports, with its line; ``from a import b`` gives ``a.b`` too,
    since ``b`` may be a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def _package(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def test_the_package_is_laid_out_by_job():
    assert {p.name for p in PACKAGE.glob("*.py")} <= {"__init__.py", "__main__.py", "atomic.py", "errors.py"}
    assert {_package(p) for p in MODULES if len(p.relative_to(PACKAGE).parts) > 1} >= set(LOWER + UPPER)


@pytest.mark.parametrize(
    "path", [p for p in MODULES if _package(p) in LOWER], ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_lower_layers_never_import_the_search_storages_or_visualization(path):
    upward = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name}"
        for line, name in _imports(path)
        if name.split(".")[:2] in (["nasopt", up] for up in UPPER)
    ]
    assert not upward


@pytest.mark.parametrize(
    "path", [p for p in MODULES if _package(p) != "storages"], ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_private_optuna_names_stay_in_storages(path):
    private = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
        for line, name in _imports(path)
        if name.split(".")[0] in ("optuna", "optuna_dashboard") and any(p.startswith("_") for p in name.split(".")[1:])
    ]
    text = path.read_text()
    private += [
        f"{path.relative_to(PACKAGE.parent)}: names logger {m}" for m in ("optuna.study._optimize",) if m in text
    ]
    assert not private
