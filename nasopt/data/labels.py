"""From radiologists' malignancy ratings to a binary label, one policy for every LIDC-based source.

LIDC-IDRI readers rate malignancy 1 (highly unlikely) to 5 (highly suspicious); 3 means
"indeterminate". Following NAS-Lung and most LIDC classification work, a nodule is malignant
when the median rating is above 3, benign when below, and the indeterminate middle is
excluded unless the policy says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from nasopt.errors import DataError

#: What a median rating of exactly 3 becomes.
Ambiguous = Literal["exclude", "benign", "malignant"]
_AMBIGUOUS_LABEL: dict[str, int | None] = {"exclude": None, "benign": 0, "malignant": 1}


@dataclass(frozen=True)
class LabelPolicy:
    """How ratings become labels. Its defaults are the reader policy of every source and of the
    study file; the study file validates the values (``data.min_readers``, ``data.ambiguous``).

    Attributes:
        min_readers: nodules rated by fewer readers are excluded (LIDC has up to 4).
        ambiguous: what a median of exactly 3 becomes: ``exclude``, ``benign`` or ``malignant``.
    """

    min_readers: int = 3
    ambiguous: Ambiguous = "exclude"


#: The default policy (>= 3 readers, median 3 excluded); frozen, so safe to share.
DEFAULT_POLICY = LabelPolicy()


def label_from_malignancy(ratings: Sequence[int], policy: LabelPolicy = DEFAULT_POLICY) -> int | None:
    """1 malignant, 0 benign, or None when the nodule is excluded under ``policy``."""
    if any(not 1 <= int(r) <= 5 for r in ratings):
        raise DataError(f"malignancy ratings must lie in 1..5, got {list(ratings)}")
    if len(ratings) < policy.min_readers:
        return None
    median = float(np.median(ratings))
    if median > 3:
        return 1
    if median < 3:
        return 0
    return _AMBIGUOUS_LABEL[policy.ambiguous]
