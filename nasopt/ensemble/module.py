"""Ensembles: members' malignancy probabilities averaged with weights, in one safe file.

An ensemble file is a checkpoint (see :mod:`nasopt.artifacts.checkpoint`) of kind ``ensemble``: every
member's tensors under the prefix ``m<i>.`` and an :class:`~nasopt.artifacts.checkpoint.EnsembleHeader`
that rebuilds each one. :func:`load_ensemble` returns a torch module, HU crops
(B, 1, 32, 32, 32) -> calibrated P(malignant) (B,), with the decision threshold chosen at export
(``.threshold``, ``.classify``). It needs neither Optuna nor the study.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from nasopt.artifacts.checkpoint import (
    CheckpointHeader,
    EnsembleHeader,
    MemberEntry,
    build_model,
    read_checkpoint,
    write_checkpoint,
)
from nasopt.ensemble.calibration import PROB_EPS
from nasopt.errors import DataError
from nasopt.inference.core import Member, predict_proba

#: The decision threshold of ensembles exported without an operating point.
DEFAULT_THRESHOLD = 0.5


class Ensemble(nn.Module):
    """Weighted mean of the members' probabilities, temperature-scaled when the header carries a
    calibration. ``header`` says where each member came from and how it decides."""

    def __init__(self, members: list[Member], weights: list[float], header: EnsembleHeader | None = None) -> None:
        super().__init__()
        if not members or len(members) != len(weights) or min(weights) <= 0:
            raise ValueError("an ensemble needs at least one member and one positive weight per member")
        self.members = nn.ModuleList(members)
        # float64: the weighted mean is taken as export took it when it chose the threshold
        w = torch.tensor(weights, dtype=torch.float64)
        self.register_buffer("weights", w / w.sum())
        self.header = header
        calibration = header.calibration if header else None
        self.temperature = calibration.temperature if calibration else 1.0
        point = header.operating_point if header else None
        self.threshold = point.threshold if point else DEFAULT_THRESHOLD

    def calibrate(self, prob: torch.Tensor) -> torch.Tensor:
        """``sigmoid(logit(prob) / T)`` in float64, as :func:`nasopt.ensemble.calibration.apply_temperature`.

        Float64 because a large temperature (a validation set that shows little signal) squeezes
        every probability towards 0.5: measured on a 1-epoch demo ensemble, T = 22,026 put them
        all within 1e-7 of 0.5, where float32 rounds them to ties and the AUC fell from 0.79 to 0.5.
        """
        prob = prob.double()
        if self.temperature == 1.0:
            return prob
        return torch.sigmoid(torch.logit(prob, eps=PROB_EPS) / self.temperature)

    def classify(self, hu: torch.Tensor) -> torch.Tensor:
        """(B,) 0 benign / 1 malignant at the ensemble's threshold."""
        return (self(hu) >= self.threshold).long()

    @property
    def input_size(self) -> int:
        return self.header.members[0].model.input_size if self.header else 32

    def member_probs(self, hu: torch.Tensor) -> torch.Tensor:
        """(B, M): each member's probability."""
        return torch.stack([m(hu) for m in self.members], dim=1)

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        return self.calibrate(self.member_probs(hu).double() @ self.weights)

    def predict(self, crops: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated ensemble (N,) float64, raw members (N, M)) probabilities of HU crops (N, S, S, S),
        S >= input size, centre-cropped and run in batches exactly as training validated."""
        crops = torch.as_tensor(np.asarray(crops)) if not isinstance(crops, torch.Tensor) else crops
        if crops.ndim != 4 or len(set(crops.shape[1:])) != 1 or crops.shape[-1] < self.input_size:
            raise DataError(
                f"crops of shape {tuple(crops.shape)}: expected (N, S, S, S) cubes with S >= {self.input_size}"
            )
        per_member = predict_proba(_PerMember(self), crops, self.input_size).cpu()
        return self.calibrate(per_member.double() @ self.weights.cpu()).numpy(), per_member.numpy()


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
