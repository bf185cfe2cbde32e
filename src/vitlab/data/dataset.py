"""The dataset type every vitlab image set returns, its error type, and the low-data subset rule.

Every item is ``{"image": FloatTensor (C, H, W) in [0, 1], "label": int}``. Normalisation is not applied here: it
lives in a model wrapper, so attacks can work in [0, 1]; the dataset only exposes ``mean`` and ``std`` for it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vitlab.errors import DataError as DataError  # re-exported: `from vitlab.data.dataset import DataError`

# Up-sampled copies of in-memory sets are computed once when they fit in this budget; above it (e.g. CIFAR at
# 224 px) each item is resized when it is read instead.
PRECOMPUTE_BUDGET_BYTES = 1 << 30

# The seed of the `train_per_class` shuffle: fixed, so a low-data split is the same in every run and on every rank.
SUBSET_SEED = 0

ImageTransform = Callable[[Tensor], Tensor]


def keep_first_per_class(targets: Sequence[int], per_class: int, seed: int = SUBSET_SEED) -> list[int]:
    """Indices of the first ``per_class`` items of every class after a seeded shuffle, in their original order.

    A class with fewer items keeps all of them. The shuffle uses Python's ``random.Random``, whose sequence is the
    same on every machine and Python version.
    """
    if per_class < 1:
        raise DataError(f"data.train_per_class: got {per_class}, expected null or an integer >= 1")
    order = list(range(len(targets)))
    random.Random(seed).shuffle(order)
    taken: dict[int, int] = {}
    keep = []
    for index in order:
        label = int(targets[index])
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            keep.append(index)
    return sorted(keep)


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``images`` (N, C, H, W) (float in [0, 1] or uint8 /255)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        block = to_unit_float(images[start:start + chunk]).double()
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 images -> float in [0, 1]; float images pass through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def resize_images(images: Tensor, size: int) -> Tensor:
    """Resize float images (N, C, H, W) or (C, H, W) to (size, size) bilinearly; anti-aliased when shrinking."""
    squeeze = images.dim() == 3
    batch = images.unsqueeze(0) if squeeze else images
    if batch.shape[-1] == size and batch.shape[-2] == size:
        return images
    shrinking = batch.shape[-1] > size or batch.shape[-2] > size
    out = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
    out = out.clamp_(0.0, 1.0)  # bilinear is convex, but anti-aliasing filters may overshoot by an ulp
    return out[0] if squeeze else out


class TensorImageDataset(Dataset[dict[str, Any]]):
    """An image set held in memory as one tensor: the bundled sets and CIFAR.

    Args:
        images: (N, 1 or 3, H, W), uint8 (0..255) or float in [0, 1].
        targets: N class indices.
        classes: class names; ``classes[k]`` is the name of label k.
        img_size: side of the returned images; they are resized once here (within a memory budget) or per item.
        channels: 1 or 3; single-channel images are repeated to 3 channels when 3 are asked for.
        mean, std: per-channel statistics (len ``channels``) for the model's normalisation wrapper.
        transform: per-item training augmentation on a (C, H, W) float tensor, or None for evaluation.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Sequence[int],
        classes: Sequence[str],
        img_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        transform: ImageTransform | None = None,
    ) -> None:
        if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] != len(targets):
            raise DataError(f"images {tuple(images.shape)}: expected (N, 1 or 3, H, W) with N = {len(targets)} labels")
        if images.shape[1] == 3 and channels == 1:
            raise DataError("channels=1 asked for a 3-channel in-memory set: convert it to grey before wrapping it")
        resized_bytes = images.shape[0] * images.shape[1] * img_size * img_size * 4
        needs_resize = images.shape[-1] != img_size or images.shape[-2] != img_size
        if needs_resize and resized_bytes <= PRECOMPUTE_BUDGET_BYTES:
            images = torch.cat([resize_images(to_unit_float(images[i:i + 4096]), img_size)
                                for i in range(0, images.shape[0], 4096)])
            needs_resize = False
        self.images = images
        self.targets: list[int] = [int(t) for t in targets]
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.img_size = img_size
        self.channels = channels
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.transform = transform
        self._resize_per_item = needs_resize

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.images[index]
        # A fresh float copy: transforms may work in place and must never touch the stored tensor.
        image = image.float().div(255.0) if image.dtype == torch.uint8 else image.clone()
        if self._resize_per_item:
            image = resize_images(image, self.img_size)
        if image.shape[0] != self.channels:
            image = image.expand(self.channels, -1, -1).contiguous()
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": self.targets[index]}
