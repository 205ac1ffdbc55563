"""Batched on-device augmentation: random crop, flips on three axes, zero-out cube.

All of it is index arithmetic on whole batches: no per-sample Python, so it runs on the GPU as
fast as the data lives there. The random crop and the flips are one gather.
"""

from __future__ import annotations

import torch


def crop_and_flip(
    x: torch.Tensor, size: int, max_shift: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample random crop (centre +- max_shift on each axis) and random flips, as one gather.

    x: (B, S, S, S) with S >= size + 2 * max_shift. Returns (B, size, size, size).
    """
    b, s = x.shape[0], x.shape[-1]
    if s < size + 2 * max_shift:
        raise ValueError(f"crop of side {s} is too small for size {size} with shift {max_shift}")
    dev = x.device
    start = (s - size) // 2 + torch.randint(-max_shift, max_shift + 1, (b, 3), device=dev, generator=generator)
    ramp = torch.arange(size, device=dev)
    idx = start[:, :, None] + ramp  # (B, 3, size)
    if flip:
        flips = torch.rand((b, 3, 1), device=dev, generator=generator) < 0.5
        idx = torch.where(flips, start[:, :, None] + (size - 1) - ramp, idx)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    return x[bi, idx[:, 0, :, None, None], idx[:, 1, None, :, None], idx[:, 2, None, None, :]]


def zero_out(x: torch.Tensor, side: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Set a random side^3 cube of each sample to zero (the normalized mean) with probability p.

    x: (B, D, H, W), already normalized. Returns a new tensor.
    """
    if side <= 0 or p <= 0:
        return x
    b, size = x.shape[0], x.shape[-1]
    dev = x.device
    lo = torch.randint(0, size - side + 1, (b, 3, 1), device=dev, generator=generator)
    ramp = torch.arange(size, device=dev)
    inside = (ramp >= lo) & (ramp < lo + side)  # (B, 3, size)
    hit = torch.rand((b, 1, 1, 1), device=dev, generator=generator) < p
    cube = inside[:, 0, :, None, None] & inside[:, 1, None, :, None] & inside[:, 2, None, None, :]
    return x.masked_fill(cube & hit, 0.0)
