"""Checkpoints: safetensors weights plus a JSON header; written atomically, never unpickled.

One file holds either one network (a trial's weights, :class:`CheckpointHeader`) or an ensemble
(every member's tensors under its own prefix, :class:`EnsembleHeader`). The header says how to
rebuild each network, the way timm's ``PretrainedCfg`` travels with its weights, and
:func:`build_model` is the one place that rebuilds one. Three metadata entries make a file:

* ``nasopt_kind``: ``model`` or ``ensemble``;
* ``nasopt``: the header as JSON;
* ``nasopt_sha256``: a digest of the tensors, so a file whose tensors were changed or swapped
  after it was written is refused rather than silently run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nasopt import __version__
from nasopt.atomic import atomic_write
from nasopt.errors import DataError
from nasopt.inference.core import set_layout
from nasopt.model.architecture import Architecture
from nasopt.model.network import ResCBAM3D, build_network

HEADER_KEY = "nasopt"
KIND_KEY = "nasopt_kind"
DIGEST_KEY = "nasopt_sha256"
Kind = Literal["model", "ensemble"]
# torch.save writes a zip archive (or, in its legacy format, a bare pickle): refused by name.
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckpointHeader(_Header):
    """How to rebuild and run one network: its architecture, input, normalisation and origin."""

    arch: dict[str, Any]
    norm: tuple[float, float]  # (mean, std) of the training HU
    input_size: int
    metrics: dict[str, float]  # validation metrics at the end of training (empty after a refit)
    study: str | None = None
    trial: int | None = None
    nasopt_version: str = __version__

    @property
    def architecture(self) -> Architecture:
        return Architecture.from_dict(self.arch)


class MemberEntry(_Header):
    """One ensemble member: its tensors are stored under ``prefix``."""

    prefix: str
    weight: float
    model: CheckpointHeader


class Selection(_Header):
    """How the members were chosen from the study's trials, and their validation score together."""

    rule: Literal["greedy", "pareto", "topk"]
    metric: Literal["auc", "accuracy", "logloss", "brier"]
    val_score: float
    k: int | None = None
    max_params: int | None = None


class Calibration(_Header):
    """Temperature scaling of the ensemble's probability: ``sigmoid(logit(p) / temperature)``."""

    method: Literal["temperature"]
    temperature: float
    fitted_on: str  # which predictions it was fitted on, in words
    val_nodules: int


class OperatingPoint(_Header):
    """The decision threshold (malignant when the calibrated probability >= threshold), chosen on
    validation by ``rule``, with the sensitivity and specificity it had there."""

    rule: str  # youden | sensitivity=0.9 | specificity=0.95
    threshold: float
    val_sensitivity: float
    val_specificity: float


class EnsembleHeader(_Header):
    """An exported ensemble: members, how they were chosen, and the data split they come from
    (so ``evaluate`` can find the held-out fold and refuse data the search has seen)."""

    members: list[MemberEntry]
    selection: Selection
    study: str
    data: dict[str, Any]  # the study's [data] settings
    split: dict[str, Any]  # the study's [split] settings
    data_fingerprint: str  # NoduleSet.fingerprint() of the data the search ran on
    search_patients: list[str]  # every patient in the search's train and validation sets
    refit: bool  # members were retrained on train + validation
    # Absent from files written before calibration existed: those run uncalibrated at 0.5.
    calibration: Calibration | None = None
    operating_point: OperatingPoint | None = None
    nasopt_version: str = __version__


H = TypeVar("H", bound=_Header)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], kind: Kind, header: _Header) -> Path:
    """Write ``tensors`` and ``header`` to ``path`` through a temp file and a rename."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {
        KIND_KEY: kind,
        HEADER_KEY: json.dumps(header.model_dump(mode="python")),
        DIGEST_KEY: tensors_digest(tensors),
    }
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def read_checkpoint(
    path: str | Path, kind: Kind, header_type: type[H], device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], H]:
    """(tensors, header) of a file written by :func:`write_checkpoint`; anything else is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        # Only now look for pickle magic: a safetensors header length can begin with the same bytes.
        with open(path, "rb") as f:
            if f.read(4).startswith(_PICKLE_MAGIC):
                raise DataError(
                    f"{path}: a pickle (torch.save) file; nasopt never unpickles, load only files nasopt wrote"
                ) from None
        raise DataError(f"{path}: truncated or not a safetensors file ({exc}); export or download it again") from None
    if HEADER_KEY not in meta or KIND_KEY not in meta:
        raise DataError(f"{path}: a safetensors file without a nasopt header; was it written by nasopt?")
    if meta[KIND_KEY] != kind:
        raise DataError(
            f"{path}: a nasopt {meta[KIND_KEY]} file where {'an' if kind == 'ensemble' else 'a'} {kind} was expected"
        )
    if meta.get(DIGEST_KEY) != tensors_digest(tensors):
        raise DataError(
            f"{path}: its tensors do not match its header's digest; the file was modified after it was written"
        )
    try:
        header = header_type.model_validate(json.loads(meta[HEADER_KEY]))
    except (ValueError, ValidationError) as exc:
        raise DataError(f"{path}: invalid nasopt header ({str(exc).splitlines()[0]})") from None
    return {k: v.to(device) for k, v in tensors.items()}, header


def build_model(
    header: CheckpointHeader,
    tensors: dict[str, torch.Tensor],
    prefix: str = "",
    where: str = "",
    device: str | torch.device | None = None,
) -> ResCBAM3D:
    """The network ``header`` describes, with its weights from ``tensors[prefix + name]``, in eval
    mode on ``device`` (default: the tensors'), in the layout inference runs it in there, so
    every rebuilt network computes exactly what training stored for it."""
    try:
        model = build_network(header.architecture)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: the header's architecture is invalid ({exc})") from None
    state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"{where}: the tensors do not fit the header's architecture ({first})") from None
    device = torch.device(device) if device is not None else next(iter(state.values())).device
    model = model.to(device).eval()
    set_layout(model, "auto", device)
    return model


def save_model(path: str | Path, state_dict: dict[str, torch.Tensor], header: CheckpointHeader) -> Path:
    """One network's checkpoint (what each trial uploads as its ``weights`` artifact)."""
    return write_checkpoint(path, state_dict, "model", header)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ResCBAM3D, CheckpointHeader]:
    """The network of a :func:`save_model` file, rebuilt from its header, and the header."""
    tensors, header = read_checkpoint(path, "model", CheckpointHeader, device)
    return build_model(header, tensors, where=str(path)), header
