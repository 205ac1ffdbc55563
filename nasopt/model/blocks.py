"""Building blocks of ResCBAM-3D: conv-BN-ReLU, residual block, CBAM."""

from __future__ import annotations

import torch
from torch import nn


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that can run its kernels channels-last inside a contiguous network.

    With ``channels_last_compute`` set, a contiguous input of side >= 16 is converted to
    channels-last for a stride-1 convolution and the output back. On CPU that is where oneDNN's
    channels-last kernels win: forward plus backward 1.3-1.75x faster at 1-16 channels on
    16^3-32^3 volumes, where the contiguous weight gradient falls back to im2col + GEMM; on 4^3
    and 8^3 volumes and for stride 2 they are even or slower. Batch norm stays contiguous: at
    4-16 channels oneDNN's channels-last one is about 5x slower. ``nasopt.training.fit.set_layout``
    sets the flag.
    """

    channels_last_compute = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_compute and self.stride[0] == 1 and x.shape[-1] >= 16 and x.is_contiguous():
            return super().forward(x.contiguous(memory_format=torch.channels_last_3d)).contiguous()
        return super().forward(x)


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3x3 convolution (no bias: batch norm follows), batch norm, ReLU."""
    return nn.Sequential(
        Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3x3 conv-BN layers plus a shortcut (1x1x1 projection when the width changes)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(c_in, c_out),
            Conv3d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm3d(c_out),
        )
        self.shortcut: nn.Module = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv3d(c_in, c_out, 1, bias=False), nn.BatchNorm3d(c_out))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018), 3D.

    Channel attention: a shared MLP over average- and max-pooled descriptors, summed, sigmoid.
    Spatial attention: a k^3 convolution over the channel-wise max and mean maps, sigmoid.
    As in NAS-Lung's network: reduction 4, no biases, a 3^3 spatial kernel (a 7^3 one costs
    12x the FLOPs of the whole stem at 32^3 and gains nothing measurable here).
    It keeps no state: explanation reads the spatial map with a forward hook on ``spatial``
    (see ``nasopt.inference.attention``), so any number of networks can be explained in one process.
    """

    def __init__(self, channels: int, reduction: int = 4, spatial_kernel: int = 3) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv3d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, 1, bias=False),
        )
        self.spatial = Conv3d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Both pooled descriptors go through the shared MLP in one call (batch of 2B).
        pooled = torch.cat([x.mean(dim=(2, 3, 4), keepdim=True), x.amax(dim=(2, 3, 4), keepdim=True)])
        avg, mx = self.mlp(pooled).chunk(2)
        channel = torch.sigmoid(avg + mx)
        x = x * channel
        desc = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(desc))
