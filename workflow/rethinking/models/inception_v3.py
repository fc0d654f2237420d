"""Inception V3 for the ImageNet experiments (Table 2, Fig. 2a), trained from scratch.

torchvision's architecture (`torchvision.models.inception_v3`: Szegedy et al.
2016, 299x299 input, 1000 classes), built with its own initialization
(`init_weights=True`, truncated normal) and the auxiliary classifier on
Mixed_6e, whose loss is added with weight 0.4 in training, as TF-slim's and
torchvision's training recipes do. Dropout (the `dropout` regularizer) sits
before the final classifier; 0 turns it off.

One change, and only below torchvision's input size: the auxiliary head
average-pools its 17x17 input 5x5/stride 3 to 5x5. Inputs smaller than about
299x299 give Mixed_6e maps smaller than 17x17 and torchvision's head fails;
here such maps are pooled adaptively to 5x5 instead, so the network (main and
auxiliary heads) runs from its minimum input of 75x75 up. At 299x299 it is
exactly torchvision's network, parameter for parameter (27,161,264 with 1000
classes and the auxiliary head).

Only the streaming engine (rethinking.engine.streamed) trains it: ImageNet-scale inputs are never held
in memory.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.inception import (
    BasicConv2d,
    Inception3,
    InceptionA,
    InceptionAux,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
)

from . import AUX_WEIGHT  # weight of the auxiliary classifier's loss in training
from . import MIN_IMAGE_SIZE as MIN_SIZE  # smallest input side: {"inception_v3": 75}


class AuxAnySize(InceptionAux):
    """torchvision's auxiliary head; maps below 17x17 are pooled adaptively to its 5x5 instead of failing."""

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) >= 17:
            x = F.avg_pool2d(x, kernel_size=5, stride=3)
        else:
            x = F.adaptive_avg_pool2d(x, (5, 5))
        x = self.conv1(self.conv0(x))
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.fc(x.flatten(1))


def inception_v3(num_classes: int, dropout: float = 0.0, aux_logits: bool = True) -> nn.Module:
    """torchvision's Inception V3 from scratch: in training mode it returns (logits, aux_logits)."""
    blocks = [BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE, AuxAnySize]
    return Inception3(
        num_classes=num_classes,
        aux_logits=aux_logits,
        transform_input=False,
        inception_blocks=blocks,
        init_weights=True,
        dropout=dropout,
    )


def build(in_shape, num_classes: int, dropout: float) -> nn.Module:
    """The registry's builder: Inception V3 for C x H x W inputs of at least 75 x 75 (RGB)."""
    side = min(in_shape[1:])
    if side < MIN_SIZE["inception_v3"]:
        raise ValueError(
            f"inception_v3 needs inputs of at least {MIN_SIZE['inception_v3']}x{MIN_SIZE['inception_v3']}, "
            f"got {in_shape[1]}x{in_shape[2]}"
        )
    return inception_v3(num_classes, dropout)


def build_stream_model(name: str, size: int, num_classes: int, dropout: float = 0.0, base=None) -> nn.Module:
    """A model of the streaming engine for size x size RGB inputs: Inception V3, or any entry of the registry."""
    from . import build_model

    return build_model(name, (3, size, size), num_classes, dropout, base=base)


def split_outputs(out) -> tuple[Tensor, Tensor | None]:
    """(logits, auxiliary logits or None) of any model's forward."""
    if isinstance(out, tuple):  # torchvision's InceptionOutputs in training mode
        return out[0], out[1]
    return out, None


def loss_of(out, y: Tensor) -> tuple[Tensor, Tensor]:
    """(training loss, main logits): cross-entropy of the main head plus AUX_WEIGHT x that of the auxiliary head."""
    logits, aux = split_outputs(out)
    loss = F.cross_entropy(logits.float(), y)
    if aux is not None:
        loss = loss + AUX_WEIGHT * F.cross_entropy(aux.float(), y)
    return loss, logits
