"""Inference: centre crop, normalisation and batched malignancy probabilities.

One path from HU crops to probabilities, shared by training's validation, the stored
validation predictions, ensembles, evaluate and predict, so that a reloaded network reproduces
a trial's stored predictions exactly. It never imports the trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasopt.model.blocks import Conv3d

#: Crops per forward pass when predicting.
EVAL_BATCH = 128


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Central size^3 cube of a batch (..., S, S, S)."""
    s = x.shape[-1]
    lo = (s - size) // 2
    return x[..., lo : lo + size, lo : lo + size, lo : lo + size]


def normalize(x: torch.Tensor, norm: tuple[float, float]) -> torch.Tensor:
    """HU -> network input with the training set's (mean, std)."""
    return (x.float() - norm[0]) / norm[1]


def set_layout(model: nn.Module, setting: str | bool, device: torch.device) -> torch.memory_format:
    """Put ``model`` in its memory layout and return the layout its inputs should have.

    ``True``: channels-last throughout. ``False``: contiguous throughout. ``auto``: channels-last
    throughout on GPUs; on CPU contiguous activations with channels-last convolutions (see
    ``Conv3d``), because oneDNN's batch norm at 4-16 channels is several times slower
    channels-last (measured: a wholly channels-last 0.03 M network trained at 0.65x the speed).
    """
    full = device.type == "cuda" if setting == "auto" else bool(setting)
    memory_format = torch.channels_last_3d if full else torch.contiguous_format
    model.to(memory_format=memory_format)
    for module in model.modules():
        if isinstance(module, Conv3d):
            module.channels_last_compute = setting == "auto" and not full
    return memory_format


class Member(nn.Module):
    """One network with the normalisation it was trained with: HU (B, 1, s, s, s) -> P(malignant) (B,)."""

    def __init__(self, network: nn.Module, norm: tuple[float, float]) -> None:
        super().__init__()
        self.network = network
        self.norm = (float(norm[0]), float(norm[1]))

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.network(normalize(hu, self.norm))[0].float(), dim=1)[:, 1]


def predict_proba(
    model: nn.Module,
    crops: torch.Tensor,
    input_size: int,
    bf16: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """``model``'s output for every HU crop (N, S, S, S), centre-cropped to ``input_size``, in
    batches of :data:`EVAL_BATCH` on the model's device, without gradients. ``model`` maps
    (B, 1, s, s, s) HU to (B, ...): a :class:`Member`, or an ensemble's per-member output."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(crops), EVAL_BATCH):
            x = center_crop(crops[i : i + EVAL_BATCH].to(device), input_size)
            out.append(model(x[:, None].contiguous(memory_format=memory_format)).float())
    return torch.cat(out)
