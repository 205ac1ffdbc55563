"""Ensembles: members' malignancy probabilities averaged with weights, in one safe file.

An ensemble file is a checkpoint (see :mod:`nasopt.checkpoint`) of kind ``ensemble``: every
member's tensors under the prefix ``m<i>.`` and an :class:`~nasopt.checkpoint.EnsembleHeader`
that rebuilds each one. :func:`load_ensemble` returns a torch module, HU crops
(B, 1, 32, 32, 32) -> P(malignant) (B,). It needs neither Optuna nor the study.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nasopt.atomic import atomic_write
from nasopt.checkpoint import (
    CheckpointHeader,
    EnsembleHeader,
    MemberEntry,
    build_model,
    read_checkpoint,
    write_checkpoint,
)
from nasopt.errors import ConfigError, DataError
from nasopt.inference import Member, predict_proba, set_layout


class Ensemble(nn.Module):
    """Weighted mean of the members' probabilities. ``header`` says where each member came from."""

    def __init__(self, members: list[Member], weights: list[float], header: EnsembleHeader | None = None) -> None:
        super().__init__()
        if not members or len(members) != len(weights) or min(weights) <= 0:
            raise ValueError("an ensemble needs at least one member and one positive weight per member")
        self.members = nn.ModuleList(members)
        w = torch.tensor(weights, dtype=torch.float64)
        self.register_buffer("weights", (w / w.sum()).float())
        self.header = header

    @property
    def input_size(self) -> int:
        return self.header.members[0].model.input_size if self.header else 32

    def member_probs(self, hu: torch.Tensor) -> torch.Tensor:
        """(B, M): each member's probability."""
        return torch.stack([m(hu) for m in self.members], dim=1)

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        return self.member_probs(hu) @ self.weights

    def predict(self, crops: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(ensemble (N,), members (N, M)) probabilities of HU crops (N, S, S, S), S >= input size,
        centre-cropped and run in batches exactly as training validated."""
        crops = torch.as_tensor(np.asarray(crops)) if not isinstance(crops, torch.Tensor) else crops
        if crops.ndim != 4 or len(set(crops.shape[1:])) != 1 or crops.shape[-1] < self.input_size:
            raise DataError(
                f"crops of shape {tuple(crops.shape)}: expected (N, S, S, S) cubes with S >= {self.input_size}"
            )
        per_member = predict_proba(_PerMember(self), crops, self.input_size).cpu()
        return (per_member @ self.weights.cpu()).numpy(), per_member.numpy()


class _PerMember(nn.Module):
    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        return self.ensemble.member_probs(hu)


def save_ensemble(
    path: str | Path, members: list[tuple[CheckpointHeader, dict[str, torch.Tensor], float]], **header: object
) -> Path:
    """Write (header, weights, weight) of each member and the rest of the :class:`EnsembleHeader`."""
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for i, (model_header, state, weight) in enumerate(members):
        prefix = f"m{i}."
        tensors.update({prefix + k: v for k, v in state.items()})
        entries.append(MemberEntry(prefix=prefix, weight=weight, model=model_header))
    return write_checkpoint(path, tensors, "ensemble", EnsembleHeader(members=entries, **header))


def load_ensemble(path: str | Path, device: str | torch.device = "cpu") -> Ensemble:
    """The ensemble in ``path`` as a torch module in eval mode; the file is never unpickled and a
    tampered, truncated or foreign file is refused with a DataError."""
    device = torch.device(device)
    tensors, header = read_checkpoint(path, "ensemble", EnsembleHeader, device)
    if not header.members or len({m.model.input_size for m in header.members}) != 1:
        raise DataError(f"{path}: an ensemble needs members that share one input size")
    members = []
    for entry in header.members:
        network = build_model(entry.model, tensors, entry.prefix, where=f"{path} member {entry.prefix[:-1]}")
        members.append(Member(network, entry.model.norm))
    return Ensemble(members, [m.weight for m in header.members], header).eval()


def export_onnx(ensemble: Ensemble, path: str | Path, opset: int = 17) -> Path:
    """The whole ensemble as one ONNX graph: HU crops ``hu`` (B, 1, s, s, s) -> ``prob_malignant`` (B,)."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it; say so before any work)
    except ImportError:
        raise ConfigError("--onnx needs the onnx package: pip install 'nasopt[onnx]'") from None
    flat = copy.deepcopy(ensemble).cpu()
    for member in flat.members:
        set_layout(member.network, False, torch.device("cpu"))  # ONNX has no memory formats
    s = ensemble.input_size
    example = torch.full((2, 1, s, s, s), -700.0)
    with atomic_write(path) as tmp, warnings.catch_warnings():
        # The TorchScript exporter: torch 2.13's torch.export-based one fails on this graph
        # (an onnx_ir pass error); the deprecation warning would break the CLI's one-line output.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            flat,
            (example,),
            tmp,
            input_names=["hu"],
            output_names=["prob_malignant"],
            dynamic_axes={"hu": {0: "batch"}, "prob_malignant": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return Path(path)
