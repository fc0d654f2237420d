"""The "small Inception" of Zhang et al. 2017 (Appendix A, Fig. 3): ``inception`` and ``inception_nobn``.

ConvModule / Inception / Downsample blocks, global mean pooling and a linear classifier.
``inception`` uses batch normalisation (no scale, learnable shift, as TF ``batch_norm`` with
``center=True, scale=False``) after bias-free convolutions; ``inception_nobn`` replaces BN+shift by a
plain conv bias, so both variants have the same number of parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvModule(nn.Module):
    """conv kxk -> BN (no affine) + learnable per-channel shift -> ReLU.

    With ``batch_norm=False``: conv kxk with bias -> ReLU (same param count).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        batch_norm: bool = True,
    ):
        super().__init__()
        if padding is None:
            padding = kernel_size // 2
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=not batch_norm)
        if batch_norm:
            self.bn = nn.BatchNorm2d(out_ch, affine=False)
            self.shift = nn.Parameter(torch.zeros(out_ch))
        else:
            self.bn = None
            self.register_parameter("shift", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x) + self.shift.view(1, -1, 1, 1)
        return F.relu(x, inplace=True)


class InceptionModule(nn.Module):
    """concat(ConvModule(c1, 1x1), ConvModule(c3, 3x3)) along channels."""

    def __init__(self, in_ch: int, c1: int, c3: int, batch_norm: bool = True):
        super().__init__()
        self.branch1 = ConvModule(in_ch, c1, 1, batch_norm=batch_norm)
        self.branch3 = ConvModule(in_ch, c3, 3, batch_norm=batch_norm)
        self.out_channels = c1 + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x)], dim=1)


class DownsampleModule(nn.Module):
    """concat(ConvModule(c, 3x3, stride 2), MaxPool 3x3 stride 2) along channels.

    Both branches use 'valid' padding, except along a spatial dimension
    smaller than 3 (tiny inputs), where padding 1 is used so the output is
    never empty. Padding is fixed at build time from ``in_hw``.
    """

    def __init__(self, in_ch: int, c: int, in_hw: tuple[int, int], batch_norm: bool = True):
        super().__init__()
        pad = tuple(0 if s >= 3 else 1 for s in in_hw)
        self.conv = ConvModule(in_ch, c, 3, stride=2, padding=pad, batch_norm=batch_norm)
        self.pool = nn.MaxPool2d(3, stride=2, padding=pad)
        self.out_channels = c + in_ch
        self.out_hw = tuple((s + 2 * p - 3) // 2 + 1 for s, p in zip(in_hw, pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


class SmallInception(nn.Module):
    def __init__(self, in_shape, num_classes: int, dropout: float, batch_norm: bool = True):
        super().__init__()
        c, h, w = in_shape
        hw = (h, w)
        bn = batch_norm
        layers: list[nn.Module] = [ConvModule(c, 96, 3, batch_norm=bn)]
        ch = 96
        # ("inc", c1, c3) or ("down", c)
        plan = [
            ("inc", 32, 32),
            ("inc", 32, 48),
            ("down", 80),
            ("inc", 112, 48),
            ("inc", 96, 64),
            ("inc", 80, 80),
            ("inc", 48, 96),
            ("down", 96),
            ("inc", 176, 160),
            ("inc", 176, 160),
        ]
        for kind, *args in plan:
            if kind == "inc":
                block = InceptionModule(ch, *args, batch_norm=bn)
            else:
                block = DownsampleModule(ch, *args, in_hw=hw, batch_norm=bn)
                hw = block.out_hw
            layers.append(block)
            ch = block.out_channels
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))  # global mean pool
        return self.classifier(self.dropout(x))


def inception(in_shape, num_classes: int, dropout: float) -> nn.Module:
    return SmallInception(in_shape, num_classes, dropout, batch_norm=True)


def inception_nobn(in_shape, num_classes: int, dropout: float) -> nn.Module:
    return SmallInception(in_shape, num_classes, dropout, batch_norm=False)
