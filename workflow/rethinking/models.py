"""Model zoo for the "Understanding deep learning requires rethinking
generalization" (Zhang et al., ICLR 2017) reproduction.

All models use ReLU non-linearities and take NCHW input of any shape
``(C, H, W)`` (tiny inputs such as 1x7x7 included); flattened sizes are
computed arithmetically from ``in_shape`` at build time.

Architectures
-------------
``mlp_1x512`` / ``mlp_3x512``
    Multi-layer perceptrons with one / three hidden layers of 512 units
    (Zhang et al. 2017, Sec. 2 and Appendix A):
    Flatten -> [Linear -> ReLU -> (Dropout)] x k -> Linear.

``alexnet``
    The "small AlexNet" of Zhang et al. 2017, i.e. the model of the
    TensorFlow CIFAR-10 tutorial (``cifar10.py``): two blocks of
    conv 5x5x64 (SAME) -> ReLU -> max-pool 3x3/2 (TF SAME) -> LRN
    (depth_radius 4, alpha 0.001/9, beta 0.75, bias 1), then
    FC 384 -> FC 192 -> FC num_classes.

``inception`` / ``inception_nobn``
    The "small Inception" of Zhang et al. 2017 (Appendix A, Fig. 3),
    built from ConvModule / Inception / Downsample blocks, ending in
    global mean pooling and a linear classifier. ``inception`` uses
    batch normalisation (no scale, learnable shift, as TF ``batch_norm``
    with ``center=True, scale=False``) after bias-free convolutions;
    ``inception_nobn`` replaces BN+shift by a plain conv bias, so both
    variants have the same number of parameters.

Trainable parameter counts at ``in_shape=(3, 28, 28)``, 10 classes
(the 28x28 centre crop of CIFAR-10 used in the paper):

=================  ==========
mlp_1x512           1,209,866
mlp_3x512           1,735,178
alexnet             1,387,786
inception           1,649,402
inception_nobn      1,649,402
=================  ==========

Dropout (``dropout > 0``) adds ``nn.Dropout`` after each hidden FC layer
(MLPs, AlexNet) or before the classifier (Inception); it never changes
the parameter count. Initialisation is the PyTorch default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("mlp_1x512", "mlp_3x512", "alexnet", "inception", "inception_nobn")
_CONV_MODELS = frozenset({"alexnet", "inception", "inception_nobn"})


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _hidden_fc(in_features: int, out_features: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(in_features, out_features), nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_conv(name: str) -> bool:
    """True for convolutional models (candidates for channels_last on CUDA)."""
    return name in _CONV_MODELS


# ---------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------

def _mlp(in_shape, num_classes: int, depth: int, width: int, dropout: float) -> nn.Sequential:
    c, h, w = in_shape
    layers: list[nn.Module] = [nn.Flatten()]
    features = c * h * w
    for _ in range(depth):
        layers += _hidden_fc(features, width, dropout)
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------
# small AlexNet (TF CIFAR-10 tutorial)
# ---------------------------------------------------------------------------

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


def _alexnet(in_shape, num_classes: int, dropout: float) -> nn.Sequential:
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
    layers += _hidden_fc(channels * h * w, 384, dropout)
    layers += _hidden_fc(384, 192, dropout)
    layers.append(nn.Linear(192, num_classes))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------
# small Inception (Zhang et al. 2017, appendix)
# ---------------------------------------------------------------------------

class ConvModule(nn.Module):
    """conv kxk -> BN (no affine) + learnable per-channel shift -> ReLU.

    With ``batch_norm=False``: conv kxk with bias -> ReLU (same param count).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
                 padding: int | tuple[int, int] | None = None, batch_norm: bool = True):
        super().__init__()
        if padding is None:
            padding = kernel_size // 2
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride,
                              padding=padding, bias=not batch_norm)
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
        plan = [("inc", 32, 32), ("inc", 32, 48), ("down", 80),
                ("inc", 112, 48), ("inc", 96, 64), ("inc", 80, 80), ("inc", 48, 96),
                ("down", 96),
                ("inc", 176, 160), ("inc", 176, 160)]
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


# ---------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------

def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int = 10,
                dropout: float = 0.0) -> nn.Module:
    """Build model ``name`` for NCHW inputs of shape ``in_shape = (C, H, W)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be (C, H, W) with positive sizes, got {in_shape!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    in_shape = tuple(int(s) for s in in_shape)
    if name == "mlp_1x512":
        return _mlp(in_shape, num_classes, depth=1, width=512, dropout=dropout)
    if name == "mlp_3x512":
        return _mlp(in_shape, num_classes, depth=3, width=512, dropout=dropout)
    if name == "alexnet":
        return _alexnet(in_shape, num_classes, dropout)
    if name == "inception":
        return SmallInception(in_shape, num_classes, dropout, batch_norm=True)
    return SmallInception(in_shape, num_classes, dropout, batch_norm=False)
