"""Triplet attention (Misra, Nalamada, Arasanipalai, Hou: "Rotate to Attend: Convolutional
Triplet Attention Module", WACV 2021).

Three branches capture the (C, W), (H, C) and (H, W) interactions of a (B, C, H, W) tensor:
each rotates the tensor so that the dimension to pool over comes first, applies a gate
(Z-pool -> 7x7 conv 2->1 without bias -> BatchNorm -> sigmoid -> multiply) and rotates back;
the three outputs are averaged. 3 x (98 + 2) = 300 parameters per module.
"""

from __future__ import annotations

import torch
from torch import nn


class ZPool(nn.Module):
    """Max and mean over dimension 1, stacked: (B, D, X, Y) -> (B, 2, X, Y)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)), dim=1)


class AttentionGate(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.pool = ZPool()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        # the published code's BatchNorm settings (momentum 0.01)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.bn(self.conv(self.pool(x))))


class TripletAttention(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.cw = AttentionGate(kernel_size)  # pools over H: the (C, W) interaction
        self.hc = AttentionGate(kernel_size)  # pools over W: the (H, C) interaction
        self.hw = AttentionGate(kernel_size)  # pools over C: the (H, W) spatial attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_cw = self.cw(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
        out_hc = self.hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
        out_hw = self.hw(x)
        return (out_cw + out_hc + out_hw) * (1.0 / 3.0)
