"""ResCBAM-3D: the NAS-Lung network family, built from an Architecture."""

from __future__ import annotations

import torch
from torch import nn

from nasopt.model.architecture import Architecture
from nasopt.model.blocks import CBAM, ResidualBlock, conv_bn_relu
from nasopt.model.head import AngleLinear


class ResCBAM3D(nn.Module):
    """Stem (two conv-BN-ReLU, optional CBAM); per stage a stride-2 conv-BN-ReLU, residual
    blocks and optional CBAM; global average pooling; A-Softmax head (2 classes).

    ``forward`` returns the head's (||x|| cos theta, ||x||, cos theta); the first element is
    the logits used for prediction.
    """

    def __init__(self, arch: Architecture, num_classes: int = 2) -> None:
        super().__init__()
        self.arch = arch
        w = arch.stem_width
        stem: list[nn.Module] = [conv_bn_relu(1, w), conv_bn_relu(w, w)]
        if arch.cbam_stem:
            stem.append(CBAM(w))
        self.stem = nn.Sequential(*stem)
        stages = []
        for widths, cbam in zip(arch.stages, arch.cbam_stages):
            layers: list[nn.Module] = [conv_bn_relu(w, w, stride=2)]
            for width in widths:
                layers.append(ResidualBlock(w, width))
                w = width
            if cbam:
                layers.append(CBAM(w))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = AngleLinear(w, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(self.features(x))

    def cbam_modules(self) -> list[tuple[str, CBAM]]:
        """Every CBAM with its place (``stem``, ``stage1`` ...), for explanation."""
        found = []
        for name, module in self.named_modules():
            if isinstance(module, CBAM):
                place = "stem" if name.startswith("stem") else f"stage{int(name.split('.')[1]) + 1}"
                found.append((place, module))
        return found


def build_network(arch: Architecture) -> ResCBAM3D:
    """The network of ``arch``; any input side divisible by 2^stages works (32 by default)."""
    return ResCBAM3D(arch)


def count_params(model: nn.Module) -> int:
    """Exact count of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(arch: Architecture, input_size: int) -> int:
    """Forward FLOPs of one sample, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_network(arch).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(2, 1, input_size, input_size, input_size))
    return counter.get_total_flops() // 2
