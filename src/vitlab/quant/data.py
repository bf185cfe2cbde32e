"""What data-free quantisation feeds the engine instead of real images, and the few real test images it may use.

The training "set" of a quantisation run is :class:`SyntheticLabels`: items carry only a class label (drawn uniformly
from the item's seed), so no real image can reach a generator or student step. ``foolbox_cifar10`` registers the 20
real CIFAR-10 test images that ship inside the foolbox wheel, for checks of a pretrained CIFAR-10 teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from vitlab.config import DataConfig
from vitlab.data import DataError, register_dataset
from vitlab.data.dataset import TensorImageDataset
from vitlab.data.foolbox import foolbox_images

__all__ = ["CIFAR10_CLASSES", "SyntheticLabels"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class SyntheticLabels(Dataset[dict[str, Any]]):
    """``length`` items ``{"label": int}`` with uniform random labels (GDFQ draws ``randint(0, K)`` every batch).

    Carries the teacher's ``num_classes``, ``mean``, ``std`` and ``classes``, which the engine reads from a train set.
    The label of item i is drawn from the global generator, which the engine seeds per item.
    """

    def __init__(self, num_classes: int, length: int, mean: Sequence[float], std: Sequence[float],
                 classes: Sequence[str] = ()) -> None:
        self.num_classes = num_classes
        self.length = length
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.classes = list(classes) or [str(k) for k in range(num_classes)]
        self.targets: list[int] = []

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"label": int(torch.randint(0, self.num_classes, ()))}


def build_foolbox_cifar10(cfg: DataConfig, split: str, train: bool) -> TensorImageDataset:
    """``foolbox_cifar10``: the 20 real CIFAR-10 test images of the foolbox wheel (split ``test`` only)."""
    if split != "test":
        raise DataError(f"foolbox_cifar10: only a 'test' split exists (20 images), got {split!r}")
    from vitlab.data.cifar import CIFAR_STATS

    images, labels = foolbox_images("cifar10")
    mean, std = CIFAR_STATS["cifar10"]
    return TensorImageDataset(images, labels.tolist(), CIFAR10_CLASSES, cfg.img_size, cfg.channels, mean, std)


register_dataset("foolbox_cifar10", build_foolbox_cifar10)
