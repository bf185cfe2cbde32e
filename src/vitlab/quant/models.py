"""The ResNet-20 of the data-free-quantisation CIFAR experiments (pytorchcv ``resnet20_cifar10`` layout), as the
vitlab model ``cifar_resnet20``: 3×3 stem, 3 stages × 3 basic blocks of widths 16/32/64, 1×1-conv + BN shortcuts
where the shape changes; 21 BatchNorm2d layers, so ClusterQ aligns the last 12 (start 9, spec §2.2)."""

from __future__ import annotations

from typing import Any

from torch import nn

from vitlab.models import register_vitlab_model
from vitlab.models.cifar_resnet import CifarResNet

__all__ = ["cifar_resnet20"]


@register_vitlab_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-20 for 32×32 inputs (0.27M parameters)."""
    if pretrained:
        raise ValueError("cifar_resnet20: no weights download (vitlab is offline); train it with a recipe")
    return CifarResNet(layers=(3, 3, 3), widths=(16, 32, 64), **kwargs)
