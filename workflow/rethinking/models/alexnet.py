"""The "small AlexNet" of Zhang et al. 2017: the model of the TensorFlow CIFAR-10 tutorial (``cifar10.py``).

Two blocks of conv 5x5x64 (SAME) -> ReLU -> max-pool 3x3/2 (TF SAME) -> LRN (depth_radius 4,
alpha 0.001/9, beta 0.75, bias 1), then FC 384 -> FC 192 -> FC num_classes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import hidden_fc


def _same_pool_pads(size: int, kernel: int = 3, stride: int = 2) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class MaxPool2dSame(nn.Module):
    """Max-pool with TensorFlow 'SAME' padding (pads with -inf, extra on bottom/right).

    Output spatial size is ``ceil(size / stride)``.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_pool_pads(x.shape[-2], self.kernel_size, self.stride)
        left, right = _same_pool_pads(x.shape[-1], self.kernel_size, self.stride)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


def alexnet(in_shape, num_classes: int, dropout: float) -> nn.Sequential:
    c, h, w = in_shape
    layers: list[nn.Module] = []
    channels = c
    for _ in range(2):
        layers += [
            nn.Conv2d(channels, 64, kernel_size=5, stride=1, padding=2),
            nn.ReLU(inplace=True),
            MaxPool2dSame(3, 2),
            nn.LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1.0),
        ]
        channels = 64
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    layers.append(nn.Flatten())
    layers += hidden_fc(channels * h * w, 384, dropout)
    layers += hidden_fc(384, 192, dropout)
    layers.append(nn.Linear(192, num_classes))
    return nn.Sequential(*layers)
