"""Deployment: one exported ensemble, three destinations, each deciding as the ensemble file does.

An ensemble file (see :mod:`nasopt.ensemble.module`) needs nasopt to run. These writers turn it into
files that need only their own runtime, each carrying the calibration (temperature) and the
decision threshold inside, so no reader has to re-apply either:

* :func:`export_onnx`: one ONNX graph, ``hu`` (B, 1, s, s, s) -> ``prob_malignant`` (B,) float64
  and ``malignant`` (B,) int64 (0/1 at the threshold), for onnxruntime and friends.
* :func:`export_torchscript`: a TorchScript file with the same two outputs and nasopt's header as
  the extra file ``nasopt.json``; plain ``torch.jit.load`` runs it.
* :func:`export_monai_bundle`: a MONAI bundle after MONAI's bundle specification
  (docs/source/mb_specification.rst): ``configs/metadata.json``, ``configs/inference.json`` and
  ``models/model.ts``, (B, 1, s, s, s) HU -> (B, 2) [P(benign), P(malignant)], for MONAI's bundle
  API and MONAI Label.

All three come from one flattened copy of the ensemble (:func:`_deployable`): contiguous layout
on CPU, because neither ONNX nor a traced graph keeps the channels-last convolutions that
inference picks on CPU (``nasopt.inference.core.set_layout``). Every file is written whole or not at
all: the single files through :func:`nasopt.atomic.atomic_write`, the bundle folder in a
temporary sibling renamed into place.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasopt import __version__
from nasopt.atomic import atomic_write
from nasopt.data.sources import PHANTOM_CAVEAT
from nasopt.ensemble.module import Ensemble
from nasopt.errors import ConfigError
from nasopt.inference.core import set_layout

#: Where MONAI's bundle metadata schema lives; tests/data/monai_meta_schema.json is a copy.
MONAI_META_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
#: The HU range a CT crop is expected to hold (air to the 12-bit top); crops are int16 HU at 1 mm.
HU_RANGE = [-1024, 3071]
#: The bundle's own version (metadata.json ``version``): its layout, not the ensemble it holds.
BUNDLE_VERSION = "0.1.0"
_MONAI_MISSING = "--monai-bundle needs the monai package: pip install 'nasopt[monai]'"


class _Decide(nn.Module):
    """hu (B, 1, s, s, s) -> (calibrated P(malignant) (B,), 0/1 at the threshold (B,) int64)."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.threshold = float(ensemble.threshold)

    def forward(self, hu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prob = self.ensemble(hu)
        # The same comparison as Ensemble.classify, so the labels are the same ones.
        return prob, (prob >= self.threshold).long()


class _TwoClass(nn.Module):
    """hu (B, 1, s, s, s) -> (B, 2) [1 - p, p]: MONAI's channel-first class probabilities."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        prob = self.ensemble(hu)
        return torch.stack([1.0 - prob, prob], dim=1)


def _deployable(ensemble: Ensemble) -> tuple[Ensemble, torch.Tensor]:
    """A contiguous CPU copy of ``ensemble`` in eval mode and an example input (2, 1, s, s, s)."""
    flat = copy.deepcopy(ensemble).cpu().eval()
    for member in flat.members:
        set_layout(member.network, False, torch.device("cpu"))  # ONNX and traces have no memory formats
    s = ensemble.input_size
    return flat, torch.full((2, 1, s, s, s), -700.0)


def _trace(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    # Traced, not scripted: the forward has no data-dependent control flow (the temperature-1
    # shortcut and Conv3d's channels-last branch are fixed for a given ensemble and layout), so a
    # trace records exactly the eager ops: on 64 toy crops it gave the eager ensemble's
    # probabilities to the last bit (and the ONNX graph, from the same trace, within 6e-8).
    # Scripting would have to compile Ensemble's properties and its pydantic header, which TorchScript cannot type. The
    # batch size stays dynamic: nothing in the graph reads it into a Python number.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings would break the CLI's one-line output
        return torch.jit.trace(module, (example,), check_trace=False)


def header_json(ensemble: Ensemble) -> dict[str, Any]:
    """What the TorchScript file's ``nasopt.json`` holds: how it decides, its input and outputs,
    and the ensemble's whole header (members, selection, study, split...)."""
    header = ensemble.header
    return {
        "threshold": float(ensemble.threshold),
        "temperature": float(ensemble.temperature),
        "input_size": ensemble.input_size,
        "input": "hu (B, 1, s, s, s) float32 Hounsfield units, 1 mm isotropic, nodule at the centre",
        "outputs": ["prob_malignant (B,) float64, calibrated", "malignant (B,) int64, prob_malignant >= threshold"],
        "nasopt_version": __version__,
        "header": header.model_dump(mode="json") if header is not None else None,
    }


def check_onnx() -> None:
    """A one-line error when the onnx package is missing: torch's exporter needs it."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError("--onnx needs the onnx package: pip install 'nasopt[onnx]'") from None


def export_onnx(ensemble: Ensemble, path: str | Path, opset: int = 17) -> Path:
    """The whole ensemble as one ONNX graph: HU crops ``hu`` (B, 1, s, s, s) -> ``prob_malignant``
    (B,), the calibrated probability, and ``malignant`` (B,) int64, 0/1 at the ensemble's threshold."""
    check_onnx()
    flat, example = _deployable(ensemble)
    with atomic_write(path) as tmp, warnings.catch_warnings():
        # The TorchScript exporter: torch 2.13's torch.export-based one fails on this graph
        # (an onnx_ir pass error); the deprecation warning would break the CLI's one-line output.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Decide(flat),
            (example,),
            tmp,
            input_names=["hu"],
            output_names=["prob_malignant", "malignant"],
            dynamic_axes={"hu": {0: "batch"}, "prob_malignant": {0: "batch"}, "malignant": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return Path(path)


def export_torchscript(ensemble: Ensemble, path: str | Path) -> Path:
    """The ensemble as a traced TorchScript module, hu (B, 1, s, s, s) -> (prob_malignant (B,),
    malignant (B,) int64), with :func:`header_json` as the extra file ``nasopt.json``. Load it with
    ``torch.jit.load(path, _extra_files={"nasopt.json": ""})``; nasopt is not needed."""
    flat, example = _deployable(ensemble)
    traced = _trace(_Decide(flat), example)
    extra = {"nasopt.json": json.dumps(header_json(ensemble), indent=2)}
    with atomic_write(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates torch.jit.save; it still writes the format
        torch.jit.save(traced, tmp, _extra_files=extra)
    return Path(path)


# --- MONAI bundle ------------------------------------------------------------------------------


def check_bundle_folder(folder: str | Path, force: bool = False) -> None:
    """Refuse, with a one-line ConfigError, a bundle export that cannot succeed: no monai, or a
    ``folder`` that is a file, or a non-empty folder without ``force``. The CLI calls it before the
    export's work, :func:`export_monai_bundle` again before writing."""
    try:
        import monai  # noqa: F401
    except ImportError:
        raise ConfigError(_MONAI_MISSING) from None
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder; give --monai-bundle a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise ConfigError(f"{folder}: exists and is not empty; pass --force to replace it")


def bundle_metadata(ensemble: Ensemble) -> dict[str, Any]:
    """``configs/metadata.json``: the keys MONAI's schema requires (meta_schema_20240725), the input
    and output formats, and under ``nasopt`` the threshold and temperature for tools to read."""
    import monai

    header = ensemble.header
    study = header.study if header else "unknown"
    phantom = bool(header) and header.data.get("source") == "phantom"
    s = ensemble.input_size
    description = (
        f"Ensemble of {len(ensemble.members)} ResCBAM-3D network(s) found by nasopt's architecture search "
        f"(after NAS-Lung) in study {study!r}: P(malignant) of a lung nodule from a {s}^3 CT crop in Hounsfield "
        f"units at 1 mm, temperature-scaled (T = {ensemble.temperature:.4g}), malignant at P >= "
        f"{ensemble.threshold:.4g}."
    )
    if phantom:
        description += f" Searched on the {PHANTOM_CAVEAT}."
    return {
        "schema": MONAI_META_SCHEMA,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by nasopt {__version__} from study {study!r}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],  # as MONAI's own DEFAULT_METADATA
        "numpy_version": np.__version__,
        # MONAI 1.6 reads the spec's older name, optional_packages_version, as this one (with a
        # deprecation warning); the model.ts needs nothing beyond MONAI's own requirements.
        "required_packages_version": {},
        "task": "Lung nodule malignancy classification from a 3D CT patch",
        "description": description,
        "authors": f"nasopt {__version__} (study {study!r})",
        "copyright": f"Copyright (c) the owners of study {study!r}",
        "intended_use": "Research only: not a medical device, not for diagnosis or clinical decisions.",
        "data_type": "numpy",
        "image_classes": f"one channel: a {s}^3 (or larger, centre-cropped) HU crop, 1 mm, nodule at the centre",
        "pred_classes": "two channels: 0 P(benign) = 1 - P(malignant), 1 P(malignant), calibrated",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": [s, s, s],
                    "dtype": "float32",
                    "value_range": HU_RANGE,
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": 2,
                    "spatial_shape": [2],
                    "dtype": "float64",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "benign", "1": "malignant"},
                }
            },
        },
        "nasopt": {
            "threshold": float(ensemble.threshold),
            "temperature": float(ensemble.temperature),
            "input_size": s,
            "study": study,
            "source": header.data.get("source") if header else None,
            "calibration": header.calibration.model_dump(mode="json") if header and header.calibration else None,
            "operating_point": (
                header.operating_point.model_dump(mode="json") if header and header.operating_point else None
            ),
            "members": [{"trial": m.model.trial, "weight": m.weight} for m in header.members] if header else [],
            "nasopt_version": __version__,
        },
    }


def bundle_inference(ensemble: Ensemble) -> dict[str, Any]:
    """``configs/inference.json`` for ``monai.bundle.ConfigParser``. ``network_def`` is the
    TorchScript file itself: no pickled ``models/model.pt`` and no network class, hence no
    ``scripts/`` package (MONAI Label, finding no model.pt, loads model.ts the same way). Override
    ``bundle_root`` (MONAI's ``--bundle_root``; MONAI Label sets it) unless run from the bundle."""
    s = ensemble.input_size
    return {
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "threshold": float(ensemble.threshold),
        "network_def": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device)",
        "network": "$@network_def.eval()",
        # One (1, S, S, S) HU crop per item, S >= s, centred on the nodule. MONAI's centre crop
        # starts at S // 2 - s // 2, nasopt's at (S - s) // 2: the same cube for an even s (32).
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32", "device": "@device"},
                {"_target_": "CenterSpatialCropd", "keys": "image", "roi_size": [s, s, s]},
            ],
        },
        "inferer": {"_target_": "SimpleInferer"},
        # Per decollated item: pred (2,) -> pred_benign, pred_malignant (1,); the latter becomes 0/1
        # at the stored threshold (AsDiscrete keeps >= threshold, as Ensemble.classify).
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "SplitDimd",
                    "keys": "pred",
                    "output_postfixes": ["benign", "malignant"],
                    "dim": 0,
                    "update_meta": False,
                },
                {"_target_": "AsDiscreted", "keys": "pred_malignant", "threshold": "@threshold"},
            ],
        },
    }


def _write_bundle(ensemble: Ensemble, root: Path) -> None:
    """Every file of the bundle into the (empty) folder ``root``."""
    from monai.data import save_net_with_metadata

    metadata, inference = bundle_metadata(ensemble), bundle_inference(ensemble)
    (root / "configs").mkdir()
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4) + "\n")
    (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=4) + "\n")
    flat, example = _deployable(ensemble)
    traced = _trace(_TwoClass(flat), example)
    # As MONAI's ckpt_export: the metadata as meta_values, each config as "<name>.json".
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.save's deprecation, as in export_torchscript
        save_net_with_metadata(
            traced,
            str(root / "models" / "model.ts"),
            include_config_vals=False,
            meta_values=metadata,
            more_extra_files={"inference.json": json.dumps(inference).encode()},
        )


def export_monai_bundle(ensemble: Ensemble, folder: str | Path, force: bool = False) -> Path:
    """The ensemble as a MONAI bundle in ``folder`` (any name; for MONAI Label give it one that
    contains "classification", and not "segmentation" or "detection": MONAI Label picks a bundle's
    task from its folder name and takes any other for segmentation).

    A non-empty ``folder`` is refused unless ``force``. The bundle is built in a temporary sibling
    folder and renamed into place only once complete; with ``force`` the old folder is moved
    aside first and deleted only after the new one is in place, so a failure at any point leaves
    the old folder as it was and no partial bundle."""
    check_bundle_folder(folder, force)
    given, folder = Path(folder), Path(folder).absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    old = None
    try:
        _write_bundle(ensemble, tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give what mkdir would have
        if folder.is_dir() and any(folder.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, old)  # onto the empty folder mkdtemp made
        try:
            os.replace(tmp, folder)  # onto nothing or an empty folder: atomic on POSIX
        except OSError:
            if old is not None:
                os.replace(old, folder)
                old = None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return given


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
