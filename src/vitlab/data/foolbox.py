"""The 20 real test images per set that ship inside the foolbox wheel (``foolbox/data/<set>_<NN>_<label>.png``).

They let a pretrained network be checked on real images with nothing downloaded: ``vitlab attack --data
foolbox-cifar10``, the ``foolbox_cifar10`` data set of the quantisation checks, the robustness benchmark.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vitlab.data.dataset import DataError

FOOLBOX_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fashionMNIST": 10}  # the PNG sets of the wheel


def foolbox_images(kind: str = "cifar10") -> tuple[Tensor, Tensor]:
    """The 20 test images of ``kind`` (a key of :data:`FOOLBOX_CLASSES`) in file order: uint8 (20, C, H, W), C = 3
    for the CIFAR sets and 1 for the MNIST ones, and their int64 labels (20,)."""
    if kind not in FOOLBOX_CLASSES:
        raise DataError(f"foolbox images: unknown set {kind!r}, expected one of {', '.join(FOOLBOX_CLASSES)}")
    try:
        import foolbox
    except ImportError:
        raise DataError(f"foolbox images ({kind}): the foolbox package is not installed "
                        "(pip install foolbox==3.3.4)") from None
    from PIL import Image

    folder = Path(foolbox.__file__).parent / "data"
    pattern = re.compile(rf"{kind}_(\d\d)_(\d+)\.png$")
    found = sorted((int(m.group(1)), int(m.group(2)), p) for p in folder.glob(f"{kind}_*.png")
                   if (m := pattern.match(p.name)))
    if not found:
        raise DataError(f"foolbox images ({kind}): no {kind}_NN_LABEL.png files under {folder}")
    arrays = []
    for _, _, path in found:
        with Image.open(path) as image:
            arrays.append(np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB")))
    images = torch.from_numpy(np.stack(arrays))
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.tensor([label for _, label, _ in found], dtype=torch.int64)


FOOLBOX_SETS = {f"foolbox-{kind.lower()}": kind for kind in FOOLBOX_CLASSES}  # data.name -> the wheel's set


def build_foolbox(name: str) -> Callable[[Any, str, bool], Any]:
    """The ``data.name`` builder of one foolbox set: its 20 images (split ``test`` only), mean / std their own."""
    kind = FOOLBOX_SETS[name]

    def build(cfg: Any, split: str, train: bool) -> Any:
        from vitlab.data.cifar import rgb_to_grey
        from vitlab.data.dataset import TensorImageDataset, channel_stats

        if split != "test":
            raise DataError(f"{name}: only a 'test' split exists (the 20 images of the foolbox wheel), got {split!r}")
        images, labels = foolbox_images(kind)
        if images.shape[1] == 3 and cfg.channels == 1:
            images = torch.from_numpy(rgb_to_grey(images.numpy()))
        mean, std = channel_stats(images)
        if len(mean) == 1 and cfg.channels == 3:
            mean, std = mean * 3, std * 3
        return TensorImageDataset(images, labels.tolist(), [str(k) for k in range(FOOLBOX_CLASSES[kind])],
                                  cfg.img_size, cfg.channels, mean, std)

    build.__doc__ = f"``{name}``: the 20 real {kind} test images of the foolbox wheel (split ``test``)."
    return build
