import numpy as np
import pytest

from nasopt.data.noduleset import NoduleSet


def blob_set(n: int = 120, side: int = 40, seed: int = 0, per_patient: int = 2) -> NoduleSet:
    """A learnable toy set: malignant nodules are larger spheres than benign ones."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    grid = np.indices((side,) * 3) - (side - 1) / 2
    r = np.sqrt((grid**2).sum(0))
    crops = rng.normal(-850, 25, (n, side, side, side)).astype(np.int16)
    for i in range(n):
        radius = (5 + 3 * rng.random()) if labels[i] else (2 + 2 * rng.random())
        crops[i][r < radius] = rng.integers(-100, 40)
    meta = [{"patient": f"P{i // per_patient:03d}", "scan": f"S{i // per_patient}", "nodule": f"N{i}"} for i in range(n)]
    return NoduleSet(crops, labels.astype(np.int64), meta, source="toy", params={"seed": seed})


@pytest.fixture
def toy_set() -> NoduleSet:
    return blob_set()
