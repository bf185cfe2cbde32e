"""Training augmentation from :class:`~vitlab.config.AugConfig`, built from timm's pieces, on images in [0, 1].

Per image: RandAugment (timm's ``rand_augment_transform``, on PIL images), pad-and-crop translation, horizontal flip,
random erasing (timm's ``RandomErasing``). Per batch: mixup / cutmix with label smoothing (timm's ``Mixup``), built by
:func:`build_mixup` and applied by the method. Nothing here normalises: images stay in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from timm.data import Mixup
from timm.data.auto_augment import RandAugment, rand_augment_transform
from timm.data.auto_augment import posterize as timm_posterize
from timm.data.random_erasing import RandomErasing
from torch import Tensor
from torchvision.transforms import RandomResizedCrop

from vitlab.config import AugConfig
from vitlab.data.dataset import DataError

# The conversions run per image, so they use numpy: some torch element-wise kernels (round among them) split even
# a 32x32 image across intra-op threads, and waking those threads costs milliseconds on a busy CPU.


def pil_to_unit_tensor(image: Image.Image) -> Tensor:
    """PIL image (mode L or RGB) -> float tensor (C, H, W) in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def unit_tensor_to_pil(image: Tensor) -> Image.Image:
    """Float tensor (1 or 3, H, W) in [0, 1] -> PIL image of mode L or RGB."""
    array = np.rint(image.numpy().transpose(1, 2, 0) * 255.0).clip(0, 255).astype(np.uint8)
    return Image.fromarray(array[:, :, 0], mode="L") if array.shape[2] == 1 else Image.fromarray(array, mode="RGB")


def posterize_keeping_one_bit(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's posterize, with at least one bit kept.

    timm's "PosterizeIncreasing" asks for 0 bits at full magnitude, which current Pillow rejects (older Pillow
    returned a black image); one bit is the strongest posterize Pillow allows.
    """
    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, max(1, int(bits_to_keep)))


def _rand_augment(config_str: str, img_size: int, channels: int, mean: Sequence[float]) -> RandAugment:
    """timm's RandAugment with timm's own hyper-parameters: translation 45% of the side, fill = the data mean."""
    fill_rgb = tuple(round(255 * m) for m in mean)
    # Mode-L images take a single fill value; PIL rejects a tuple there.
    fill = fill_rgb[0] if channels == 1 else fill_rgb
    hparams = {"translate_const": int(img_size * 0.45), "img_mean": fill}
    if not config_str.startswith("rand"):
        raise DataError(f"data.aug.rand_augment: got {config_str!r}, expected a timm RandAugment string such as "
                        "'rand-m9-mstd0.5-inc1'")
    try:
        transform = rand_augment_transform(config_str, hparams)
    except (AssertionError, ValueError, KeyError) as exc:
        raise DataError(f"data.aug.rand_augment: {config_str!r} is not a valid timm RandAugment string "
                        f"({type(exc).__name__}: {exc}); example: 'rand-m9-mstd0.5-inc1'") from None
    for op in transform.ops:
        if op.aug_fn is timm_posterize:
            op.aug_fn = posterize_keeping_one_bit
    return transform


class TrainTransform:
    """Per-image training augmentation; returns a fresh float tensor (C, H, W) in [0, 1].

    Takes a float tensor (C, H, W) in [0, 1] (in-memory sets) or a PIL image already at the model's size (image
    folders). A tensor goes through PIL only when RandAugment is on, so sets without it pay no PIL round trip.
    """

    def __init__(self, aug: AugConfig, img_size: int, channels: int, mean: Sequence[float], std: Sequence[float]):
        self.rand_augment = _rand_augment(aug.rand_augment, img_size, channels, mean) if aug.rand_augment else None
        self.rrc_scale = tuple(aug.rrc_scale) if aug.rrc_scale else None
        self.padding = int(aug.random_crop_padding)
        self.hflip = float(aug.hflip)
        if self.padding < 0:
            raise DataError(f"data.aug.random_crop_padding: got {self.padding}, expected an integer >= 0")
        # timm erases after normalisation with N(0, 1) noise ("pixel" mode, timm's training default). In [0, 1] that
        # noise is mean + std * N(0, 1), clipped to the valid range.
        self.erasing = (RandomErasing(aug.random_erasing, mode="pixel", device="cpu")
                        if aug.random_erasing > 0 else None)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    @staticmethod
    def is_active(aug: AugConfig) -> bool:
        """Whether ``aug`` asks for any per-image augmentation (mixup / cutmix are per batch, not here)."""
        return (bool(aug.rand_augment) or bool(aug.rrc_scale) or aug.random_crop_padding > 0 or aug.hflip > 0
                or aug.random_erasing > 0)

    def __call__(self, image: Tensor | Image.Image) -> Tensor:
        if self.rand_augment is not None:
            pil = image if isinstance(image, Image.Image) else unit_tensor_to_pil(image)
            image = pil_to_unit_tensor(self.rand_augment(pil))
        elif isinstance(image, Image.Image):
            image = pil_to_unit_tensor(image)
        else:
            image = image.clone()
        if self.rrc_scale is not None:
            # Random-resized crop back to the same size (ratio 3/4..4/3, bilinear), as torchvision's.
            height, width = image.shape[-2:]
            top, left, h, w = RandomResizedCrop.get_params(image, list(self.rrc_scale), [3 / 4, 4 / 3])
            crop = image[:, top:top + h, left:left + w].unsqueeze(0)
            image = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0].clamp_(0, 1)
        if self.padding > 0:
            height, width = image.shape[-2:]
            padded = F.pad(image, (self.padding,) * 4)  # zero (black) border, as the CIFAR recipe pads
            top, left = (int(v) for v in torch.randint(0, 2 * self.padding + 1, (2,)))
            image = padded[:, top:top + height, left:left + width].contiguous()
        if self.hflip > 0 and float(torch.rand(())) < self.hflip:
            image = image.flip(-1)
        if self.erasing is not None:
            # Erase into a NaN canvas so that untouched pixels keep their exact values.
            noise = torch.full_like(image, float("nan"))
            self.erasing(noise)
            erased = ~torch.isnan(noise)
            if erased.any():
                fill = (self.mean + self.std * noise.nan_to_num(0.0)).clamp_(0.0, 1.0)
                image = torch.where(erased, fill, image)
        return image


def build_mixup(aug: AugConfig, num_classes: int, label_smoothing: float) -> Mixup | None:
    """timm's per-batch mixup / cutmix with label smoothing, or None when both alphas are 0.

    Call it on a batch as ``images, soft_targets = mixup(images, labels)``: images (B, C, H, W) stay in [0, 1]
    (convex combinations and pasted boxes), soft_targets are (B, num_classes). timm needs an even batch size.
    """
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None
    if num_classes < 2:
        raise DataError(f"mixup/cutmix: got num_classes={num_classes}, expected at least 2")
    if not 0.0 <= label_smoothing < 1.0:
        raise DataError(f"label_smoothing: got {label_smoothing}, expected a value in [0, 1)")
    return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob, switch_prob=aug.mixup_switch_prob,
                 mode="batch", label_smoothing=label_smoothing, num_classes=num_classes)
