"""Layers shared by the models of this package."""

from __future__ import annotations

from torch import nn


def hidden_fc(in_features: int, out_features: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(in_features, out_features), nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers
