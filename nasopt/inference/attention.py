"""CBAM attention read from outside the network, with forward hooks (as MONAI's ``ModelWithHooks``).

Networks keep no explanation state: :func:`spatial_attention` registers a hook on each CBAM's
spatial convolution for the length of a ``with`` block and removes it after, so members of one
ensemble, or many trials, can be explained in one process without touching each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from nasopt.inference.core import Member, center_crop
from nasopt.model import ResCBAM3D


@contextmanager
def spatial_attention(network: ResCBAM3D) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, each forward pass stores every CBAM's spatial attention map (B, d, h, w)
    under its place (``stem``, ``stage1`` ...), in the order the network runs them."""
    maps: dict[str, torch.Tensor] = {}

    def keep(place: str):
        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            maps[place] = torch.sigmoid(output.detach().float())[:, 0]  # the CBAM applies this sigmoid

        return hook

    handles = [cbam.spatial.register_forward_hook(keep(place)) for place, cbam in network.cbam_modules()]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def last_attention(member: Member, hu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(P(malignant) (B,), the deepest CBAM's spatial attention upsampled to the input (B, s, s, s),
    or None for a network without CBAM) for HU inputs (B, 1, s, s, s)."""
    member.eval()
    with torch.inference_mode(), spatial_attention(member.network) as maps:
        prob = member(hu)
    if not maps:
        return prob, None
    deepest = list(maps.values())[-1]
    return prob, F.interpolate(deepest[:, None], size=hu.shape[-3:], mode="trilinear", align_corners=False)[:, 0]


def example_rows(
    member: Member, crops: np.ndarray, labels: np.ndarray, names: list[str], input_size: int, per_class: int = 2
) -> list[tuple[np.ndarray, np.ndarray | None, str]]:
    """(HU cube, attention cube, caption) of the first ``per_class`` benign and malignant nodules,
    for :func:`nasopt.visualization.figures.attention_grid`."""
    picked = [i for label in (0, 1) for i in np.flatnonzero(labels == label)[:per_class]]
    if not picked:
        return []
    hu = center_crop(torch.from_numpy(np.ascontiguousarray(crops[picked])), input_size).float()
    device = next(member.parameters()).device
    prob, attention = last_attention(member, hu[:, None].to(device))
    return [
        (
            hu[k].numpy(),
            None if attention is None else attention[k].cpu().numpy(),
            f"{'malignant' if labels[i] else 'benign'}, p = {float(prob[k]):.2f}\n{names[i]}",
        )
        for k, i in enumerate(picked)
    ]
