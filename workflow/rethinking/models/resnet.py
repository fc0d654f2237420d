"""``resnet18``: the CIFAR-style ResNet-18 of today's memorization and label-noise studies.

He et al. 2016's basic-block ResNet-18 with the stem CIFAR-10 work uses (e.g. kuangliu/pytorch-cifar,
Zhang et al.'s follow-ups, Arpit et al.): a 3x3 stride-1 convolution and no max-pool, then four stages
of two basic blocks with 64, 128, 256 and 512 channels (stride 2 at the first block of the last three;
a 1x1 convolution + batch norm on the shortcut where the shape changes), global average pooling and a
linear classifier. 11,173,962 parameters at 3x32x32 and 10 classes. Dropout (the `dropout`
regularizer) sits before the classifier. Initialization is the PyTorch default.

``resnet18_k<k>``: the same network with k, 2k, 4k and 8k channels in its four stages (and k in the stem):
Nakkiran et al.'s (ICLR 2020) width family for model-wise double descent; k = 64 is ``resnet18``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, ch = [], width
        for scale, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            stages += [BasicBlock(ch, scale * width, stride), BasicBlock(scale * width, scale * width, 1)]
            ch = scale * width
        self.layers = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


def resnet18(in_shape, num_classes: int, dropout: float, width: int = 64) -> nn.Module:
    return ResNet18(in_shape[0], num_classes, dropout, width)
