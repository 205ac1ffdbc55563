"""NoduleMNIST3D (MedMNIST v2): a ready-made LIDC-IDRI nodule benchmark in one .npz file.

Users download ``nodulemnist3d.npz`` (28³) or ``nodulemnist3d_64.npz`` (64³) themselves from
https://zenodo.org/records/10519652 (or with the ``medmnist`` package); nasopt never downloads.
The file holds ``{train,val,test}_images`` uint8 (N, S, S, S) and ``{train,val,test}_labels``
(N, 1), 0 benign / 1 malignant.

How it becomes a NoduleSet:

* Intensities stay MedMNIST's uint8 0..255 (not HU); crops store those values as int16 and
  ``params["intensity"] == "uint8"`` says so, so nothing mistakes them for HU.
* Crops of another edge than ``crop_size`` are resized with ``scipy.ndimage.zoom`` (linear,
  ``grid_mode=True`` so the cube's outer faces map onto each other, edge values repeated),
  then rounded and clipped to 0..255. MedMNIST's voxels are not 1 mm (the original crops
  were rescaled to fit the cube), so sizes in mm are not comparable with the other sources.
* The official splits are kept as folds: train 0, val 1, test 2 (``params["splits"]``), so
  a study uses ``split.test_fold = 2`` and ``split.val_fold = 1``.
* MedMNIST publishes no patient ids, so each sample is its own patient
  (``patient = "<split>-<index>"``); patient grouping cannot be enforced beyond the
  official splits.

The output version is this source's entry in :mod:`nasopt.data.sources`: bump it when the
output changes for the same file.
"""

from __future__ import annotations

import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from nasopt.data.badinput import SkipReport
from nasopt.data.contract import DEFAULT_RUN, NPZ, Run
from nasopt.data.inputs import check_file
from nasopt.data.noduleset import CROP_SIZE, NoduleSet
from nasopt.errors import DataError

#: Official split -> fold id.
SPLITS = {"train": 0, "val": 1, "test": 2}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    check_file(path, f"download nodulemnist3d.npz from MedMNIST (zenodo.org/records/10519652), pass it with {NPZ.flag}")
    try:
        # allow_pickle=False: a data file must never run code
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc}); download it again") from exc


def _check_split(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> str | None:
    """What is wrong with one split's arrays, or None."""
    if images.dtype != np.uint8:
        return f"{split}_images has dtype {images.dtype}, MedMNIST images are uint8"
    if images.ndim != 4 or not images.shape[1] == images.shape[2] == images.shape[3]:
        return f"{split}_images has shape {images.shape}, expected (N, S, S, S) cubes"
    if labels.ndim not in (1, 2) or (labels.ndim == 2 and labels.shape[1] != 1):
        return f"{split}_labels has shape {labels.shape}, expected (N, 1)"
    if len(labels) != len(images):
        return f"{split}_labels has {len(labels)} entries for {len(images)} images"
    if not np.issubdtype(labels.dtype, np.integer) or not np.isin(labels, (0, 1)).all():
        return f"{split}_labels must be integers 0 (benign) or 1 (malignant)"
    return None


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 cubes (N, S, S, S) -> int16 cubes (N, size³) of the same 0..255 values."""
    if images.shape[1] == size:
        return images.astype(np.int16)
    factor = size / images.shape[1]
    out = np.empty((len(images), size, size, size), np.int16)
    for i, image in enumerate(images):
        zoomed = ndimage.zoom(image.astype(np.float32), factor, order=1, mode="nearest", grid_mode=True)
        out[i] = np.clip(np.rint(zoomed), 0, 255).astype(np.int16)
    return out


def prepare_nodulemnist3d(npz_file: str | Path, *, crop_size: int = CROP_SIZE, run: Run = DEFAULT_RUN) -> NoduleSet:
    """NoduleMNIST3D's official splits as a NoduleSet (source ``nodulemnist3d``, folds = split).

    One array file is read in seconds, so ``run.workers`` is unused. A bad split raises
    DataError unless ``run.skip_bad``, which drops that split and lists it in the JSON report at
    ``run.report_path``; the labels come from MedMNIST as they are (no reader policy applies).
    """
    path = Path(npz_file)
    started = time.perf_counter()
    arrays = _read_npz(path)
    report = SkipReport("nodulemnist3d", skip_bad=run.skip_bad, echo=run.progress)
    expected = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")]
    missing = [key for key in expected if key not in arrays]
    if len(missing) == len(expected):
        raise DataError(f"{path}: none of the MedMNIST keys {expected} is present; pass a MedMNIST nodulemnist3d .npz")
    crops: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    meta: list[dict[str, Any]] = []
    folds: list[np.ndarray] = []
    native = None
    for split, fold in SPLITS.items():
        absent = [key for key in (f"{split}_images", f"{split}_labels") if key not in arrays]
        if absent:
            report.bad(path, f"missing key(s) {absent}; the file is incomplete, download it again")
            continue
        images, split_labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        problem = _check_split(path, split, images, split_labels)
        if problem is None and native is not None and images.shape[1] != native:
            problem = f"{split}_images are {images.shape[1]}³ but the other splits are {native}³"
        if problem is not None:
            report.bad(path, problem)
            continue
        native = images.shape[1]
        crops.append(_resize(images, crop_size))
        labels.append(split_labels.reshape(-1).astype(np.int64))
        folds.append(np.full(len(images), fold, np.int64))
        meta.extend(
            {"patient": f"{split}-{i}", "scan": f"{split}-{i}", "nodule": f"{split}-{i}", "split": split, "index": i}
            for i in range(len(images))
        )
    counts = {
        "nodules": len(meta),
        **{split: int((np.concatenate(folds) == f).sum()) if folds else 0 for split, f in SPLITS.items()},
    }
    if run.report_path is not None and run.skip_bad:
        report.write(run.report_path, {"counts": counts})
    if not meta:
        raise DataError(f"{path}: no usable split left; download the file again")
    if run.progress:
        elapsed = time.perf_counter() - started
        print(
            f"nodulemnist3d: {counts} from {path.name} in {elapsed:.1f} s (native {native}³ -> {crop_size}³)",
            file=sys.stderr,
        )
    params = {
        "crop_size": crop_size,
        "intensity": "uint8",
        "native_size": int(native),  # type: ignore[arg-type]
        "resize": "none" if native == crop_size else "scipy.ndimage.zoom order=1 grid_mode=True mode=nearest",
        "splits": dict(SPLITS),
    }
    return NoduleSet(
        crops=np.concatenate(crops),
        labels=np.concatenate(labels),
        meta=meta,
        source="nodulemnist3d",
        params=params,
        folds=np.concatenate(folds),
    )
