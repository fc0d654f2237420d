"""Multi-layer perceptrons: ``mlp_<depth>x<width>`` (the paper's ``mlp_1x512`` and ``mlp_3x512`` are two).

Flatten -> [Linear -> ReLU -> (Dropout)] x depth -> Linear (Zhang et al. 2017, Sec. 2 and Appendix A).
"""

from __future__ import annotations

from torch import nn

from .layers import hidden_fc


def mlp(in_shape, num_classes: int, depth: int, width: int, dropout: float) -> nn.Sequential:
    c, h, w = in_shape
    layers: list[nn.Module] = [nn.Flatten()]
    features = c * h * w
    for _ in range(depth):
        layers += hidden_fc(features, width, dropout)
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
