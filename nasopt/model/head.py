"""Angular-margin (A-Softmax) head and loss, after SphereFace (Liu et al. 2017).

The head normalizes each class weight vector, so a logit is ||x|| cos(theta). The loss
replaces the target logit by ||x|| psi(theta), psi(theta) = (-1)^k cos(m theta) - 2k for
theta in [k pi/m, (k+1) pi/m], blended with ||x|| cos(theta) by an annealed lambda:
    f_target = (lambda ||x|| cos(theta) + ||x|| psi(theta)) / (1 + lambda).
With m = 1, psi = cos and the loss is plain cross-entropy on ||x|| cos(theta).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AngleLinear(nn.Module):
    """Linear layer with unit-norm class weights and no bias. Returns (||x|| cos theta, ||x||, cos theta)."""

    def __init__(self, in_features: int, out_features: int = 2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.float()  # angles in bf16 are too coarse for the margin; this layer is tiny
        norm = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cos = (F.normalize(x, dim=1) @ F.normalize(self.weight.float(), dim=1).t()).clamp(-1.0, 1.0)
        return norm * cos, norm, cos


def psi(cos: torch.Tensor, margin: int) -> torch.Tensor:
    """SphereFace's monotone extension of cos(m theta), computed from cos(theta)."""
    if margin == 1:
        return cos
    theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    k = torch.floor(margin * theta / math.pi)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * torch.cos(margin * theta) - 2.0 * k


class AngularMarginLoss(nn.Module):
    """A-Softmax loss with SphereFace's lambda schedule: max(lambda_min, base (1 + gamma t)^-1).

    ``step()`` advances t once per optimizer step; ``lam`` may also be set directly.
    """

    def __init__(self, margin: int = 4, base: float = 1000.0, gamma: float = 0.12, lambda_min: float = 5.0) -> None:
        super().__init__()
        if margin not in (1, 2, 3, 4):
            raise ValueError(f"margin must be 1, 2, 3 or 4, got {margin}")
        self.margin, self.base, self.gamma, self.lambda_min = margin, base, gamma, lambda_min
        self.iteration = 0
        self.lam = base

    def step(self) -> None:
        self.iteration += 1
        self.lam = max(self.lambda_min, self.base / (1.0 + self.gamma * self.iteration))

    def forward(self, head_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        logits, norm, cos = head_out
        target_cos = cos.gather(1, target[:, None])
        target_logit = norm * (self.lam * target_cos + psi(target_cos, self.margin)) / (1.0 + self.lam)
        logits = logits.scatter(1, target[:, None], target_logit)
        return F.cross_entropy(logits, target)
