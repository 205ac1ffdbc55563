"""nasopt: multi-objective architecture search for 3D pulmonary-nodule classifiers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nasopt.ensemble.module import Ensemble

__version__ = "0.1.0"


def load_ensemble(path: str | Path, device: str = "cpu") -> Ensemble:
    """An exported ensemble file as a torch module: HU crops (B, 1, 32, 32, 32) -> P(malignant) (B,).

    Imports torch on first call, so ``import nasopt`` stays light. See
    :func:`nasopt.ensemble.module.load_ensemble`.
    """
    from nasopt.ensemble.module import load_ensemble as load

    return load(path, device)
