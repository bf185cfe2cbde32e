"""Multi-crop augmentation of Mugs (specs/mugs.md §2.2): weak (DINO) and strong (DeiT) pipelines, global and local.

Per image: 2 teacher global crops (weak pipelines 1 and 2); 2 student global crops, freshly sampled, either both weak
(pipelines 1 and 2, with probability ``1 - strong_prob``) or both strong; ``local_crops`` local crops, each weak or
strong with probability ``strong_prob``. ``weak_flag`` records whether the student's global crops were weak (only
those enter the student's LGDS memory).

Weak pipeline: RandomResizedCrop (bicubic), flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, Gaussian
blur (PIL radius 0.1-2; p 1.0 / 0.1 / 0.5 for global 1 / global 2 / local), solarize p 0.2 (global 2 only).
Strong pipeline (the official order): flip, RandAugment (timm, translation 0.45 of the crop side), RandomResizedCrop
(bicubic), RandomErasing. Everything runs on PIL images; randomness comes from ``random`` and ``torch`` (seeded per
item by the engine), never from a clock.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from vitlab.config import AugConfig
from vitlab.data.dataset import DataError
from vitlab.data.image_folder import ImageFolderDataset
from vitlab.data.transforms import TrainTransform, _rand_augment, pil_to_unit_tensor, unit_tensor_to_pil

__all__ = ["ByteImageDataset", "MultiCropDataset", "MultiCropTransform"]


class RandomGaussianBlur:
    """PIL Gaussian blur of a random radius in [0.1, 2.0] with probability ``p`` (DINO)."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, image: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class RandomSolarize:
    """PIL solarize (threshold 128) with probability ``p``."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        return ImageOps.solarize(image) if random.random() < self.p else image


def _check_range(name: str, value: Sequence[float]) -> tuple[float, float]:
    if len(value) != 2 or not 0.0 < value[0] <= value[1] <= 1.0:
        raise DataError(f"{name}: got {list(value)}, expected [low, high] with 0 < low <= high <= 1")
    return float(value[0]), float(value[1])


class MultiCropTransform:
    """PIL image -> ``{"teacher_globals": (2, C, G, G), "student_globals": (2, C, G, G),
    "student_locals": (n, C, L, L), "weak_flag": bool}``, all in [0, 1].

    Args:
        global_size, local_size: crop sides G and L (224 / 96 for ImageNet).
        local_crops: number n of local crops (10 for ImageNet).
        global_scale, local_scale: RandomResizedCrop area ranges ((0.25, 1) and (0.05, 0.25) for ImageNet).
        strong_prob: probability of the strong pipeline for the student's crops (0.5).
        hflip: flip probability (0.5; 0 for digits and glyphs, where a flip changes the class).
        channels, mean, std: image channels and the statistics used as RandAugment / RandomErasing fill.
        rand_augment: timm RandAugment string of the strong pipeline.
        random_erasing: RandomErasing probability of the strong pipeline.
    """

    def __init__(self, global_size: int, local_size: int, local_crops: int, global_scale: Sequence[float],
                 local_scale: Sequence[float], strong_prob: float, hflip: float, channels: int,
                 mean: Sequence[float], std: Sequence[float], rand_augment: str = "rand-m9-mstd0.5-inc1",
                 random_erasing: float = 0.25) -> None:
        if global_size < 1 or local_size < 1 or local_crops < 0:
            raise DataError(f"multi-crop: global size {global_size}, local size {local_size} and local crop count "
                            f"{local_crops} must be positive (the count may be 0)")
        if not 0.0 <= strong_prob <= 1.0 or not 0.0 <= hflip <= 1.0:
            raise DataError(f"multi-crop: strong_prob {strong_prob} and hflip {hflip} must be probabilities")
        global_scale = _check_range("method.crops.global_scale", global_scale)
        local_scale = _check_range("method.crops.local_scale", local_scale)
        self.local_crops = local_crops
        self.strong_prob = strong_prob
        bicubic = transforms.InterpolationMode.BICUBIC

        def weak(size: int, scale: tuple[float, float], blur: float, solarize: float) -> transforms.Compose:
            steps: list[Any] = [transforms.RandomResizedCrop(size, scale=scale, interpolation=bicubic),
                                transforms.RandomHorizontalFlip(hflip),
                                transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                                transforms.RandomGrayscale(0.2),
                                RandomGaussianBlur(blur)]
            if solarize > 0:
                steps.append(RandomSolarize(solarize))
            return transforms.Compose(steps)

        def strong(size: int, scale: tuple[float, float]) -> transforms.Compose:
            steps: list[Any] = [transforms.RandomHorizontalFlip(hflip)]
            if rand_augment:
                steps.append(_rand_augment(rand_augment, size, channels, mean))
            steps.append(transforms.RandomResizedCrop(size, scale=scale, interpolation=bicubic))
            return transforms.Compose(steps)

        self.weak_global = (weak(global_size, global_scale, 1.0, 0.0), weak(global_size, global_scale, 0.1, 0.2))
        self.weak_local = weak(local_size, local_scale, 0.5, 0.0)
        self.strong_global = strong(global_size, global_scale)
        self.strong_local = strong(local_size, local_scale)
        # Erasing reuses the data package's [0, 1]-space RandomErasing (timm's "pixel" mode, mean + std · N(0, 1)).
        self.erasing = (TrainTransform(AugConfig(random_erasing=random_erasing), global_size, channels, mean, std)
                        if random_erasing > 0 else None)

    def _strong(self, pipeline: transforms.Compose, image: Image.Image) -> Tensor:
        tensor = pil_to_unit_tensor(pipeline(image))
        return self.erasing(tensor) if self.erasing is not None else tensor

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        teacher = [pil_to_unit_tensor(p(image)) for p in self.weak_global]
        weak_flag = random.random() >= self.strong_prob
        if weak_flag:
            student = [pil_to_unit_tensor(p(image)) for p in self.weak_global]
        else:
            student = [self._strong(self.strong_global, image) for _ in range(2)]
        locals_ = [self._strong(self.strong_local, image) if random.random() < self.strong_prob
                   else pil_to_unit_tensor(self.weak_local(image)) for _ in range(self.local_crops)]
        out: dict[str, Any] = {"teacher_globals": torch.stack(teacher), "student_globals": torch.stack(student),
                               "weak_flag": weak_flag}
        if locals_:
            out["student_locals"] = torch.stack(locals_)
        return out



def _inherit_attributes(wrapper: object, base: object) -> None:
    """Copy the data-set attributes the engine and methods read (class count, names, statistics, targets)."""
    for attr in ("num_classes", "classes", "mean", "std", "targets"):
        if hasattr(base, attr):
            setattr(wrapper, attr, getattr(base, attr))

class MultiCropDataset(Dataset[dict[str, Any]]):
    """Any vitlab image set seen through a :class:`MultiCropTransform`; items also keep their ``label``.

    Image folders are read at full resolution (the crops then take their areas of the whole picture, as on ImageNet);
    in-memory sets (digits, glyphs, CIFAR) are cropped from their images at ``data.img_size``.
    """

    def __init__(self, base: Dataset[dict[str, Any]], transform: MultiCropTransform, channels: int) -> None:
        self.base = base
        self.transform = transform
        self.channels = channels
        _inherit_attributes(self, base)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _image(self, index: int) -> tuple[Image.Image, int]:
        if isinstance(self.base, ImageFolderDataset):
            path = self.base.paths[index]
            try:
                with Image.open(path) as handle:
                    return handle.convert("L" if self.channels == 1 else "RGB"), self.base.targets[index]
            except OSError as exc:
                raise DataError(f"{path}: cannot read this image ({exc})") from None
        item = self.base[index]
        return unit_tensor_to_pil(item["image"]), int(item["label"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self._image(index)
        out = self.transform(image)
        out["label"] = label
        return out


class ByteImageDataset(Dataset[dict[str, Any]]):
    """The plain images of any vitlab image set as uint8 tensors, ``{"image": (C, H, W) uint8, "label": int}``, for
    crops made on the batch (:class:`~vitlab.data.batch_aug.BatchMultiCrop`, ``method.crops.backend: batch``).

    In-memory sets give their images at ``data.img_size`` (rounded to uint8 as the PIL path rounds them); image
    folders are decoded once per read, shorter side resized to ``data.img_size`` and centre-cropped (equal sides are
    needed to batch them), so their crops cover the central square rather than the whole picture.
    """

    def __init__(self, base: Dataset[dict[str, Any]], channels: int) -> None:
        self.base = base
        self.channels = channels
        _inherit_attributes(self, base)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(self.base, ImageFolderDataset):
            array = np.asarray(self.base.load(index), dtype=np.uint8)
            array = array[:, :, None] if array.ndim == 2 else array
            return {"image": torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))),
                    "label": self.base.targets[index]}
        item = self.base[index]
        # numpy, as data/transforms.py converts: no torch intra-op threads woken for one small image
        array = np.rint(item["image"].numpy() * 255.0).clip(0, 255).astype(np.uint8)
        return {"image": torch.from_numpy(array), "label": int(item["label"])}
