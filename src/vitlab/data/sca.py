"""Spatial-consistent augmentation (SCA), specs/sun.md §2.4 and pitfall 8: teacher and student share the geometry.

The geometric ("weak") view is drawn once: random-resized crop (bicubic), horizontal flip, RandAugment with
probability ``rand_augment_prob``. It is the teacher's input. The student's input is the **same** view, to which,
with probability ``strong_prob``, the non-spatial ops are added (colour jitter, Gaussian blur, solarize, grey), then
random erasing (always on, probability ``erasing``). Since the student view is derived from the teacher view and
never re-cropped, teacher patch j covers the same pixels as student patch j.

Images stay in [0, 1] (normalisation lives in the model wrapper); erasing draws N(0, 1) noise in normalised space,
i.e. mean + std · N(0, 1) here, as :class:`~vitlab.data.transforms.TrainTransform` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torchvision.transforms import ColorJitter, InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF

from vitlab.config import AugConfig
from vitlab.data.dataset import DataError
from vitlab.data.transforms import TrainTransform, _rand_augment, pil_to_unit_tensor, unit_tensor_to_pil
from vitlab.options import SCAConfig  # a section of SUN's schema, defined without torch


class SpatialConsistentAugmentation:
    """``sca(image) -> (teacher_view, student_view)``, both float (C, size, size) in [0, 1].

    Takes a float tensor (C, H, W) in [0, 1] or a PIL image. Random draws use torch's generator, except
    RandAugment (timm, Python's ``random``).
    """

    def __init__(self, cfg: SCAConfig, img_size: int, channels: int, mean: Sequence[float], std: Sequence[float]):
        for name in ("hflip", "rand_augment_prob", "strong_prob", "blur_prob", "solarize_prob", "grey_prob",
                     "erasing"):
            value = getattr(cfg, name)
            if not 0.0 <= value <= 1.0:
                raise DataError(f"sun.sca.{name}: got {value}, expected a probability in [0, 1]")
        if len(cfg.scale) != 2 or not 0 < cfg.scale[0] <= cfg.scale[1] <= 1:
            raise DataError(f"sun.sca.scale: got {cfg.scale}, expected [low, high] with 0 < low <= high <= 1")
        self.cfg = cfg
        self.crop = RandomResizedCrop(img_size, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
                                      interpolation=InterpolationMode.BICUBIC)
        self.rand_augment = _rand_augment(cfg.rand_augment, img_size, channels, mean) if cfg.rand_augment else None
        strength = cfg.color_jitter
        self.jitter = ColorJitter(strength, strength, strength) if strength > 0 else None
        self.erase = (TrainTransform(AugConfig(random_erasing=cfg.erasing), img_size, channels, mean, std)
                      if cfg.erasing > 0 else None)

    def _chance(self, p: float) -> bool:
        return p > 0 and float(torch.rand(())) < p

    def weak_view(self, image: Tensor | Image.Image) -> Image.Image:
        """The shared geometric view (the teacher's input) as a PIL image."""
        pil = image if isinstance(image, Image.Image) else unit_tensor_to_pil(image)
        pil = self.crop(pil)
        if self._chance(self.cfg.hflip):
            pil = TF.hflip(pil)
        if self.rand_augment is not None and self._chance(self.cfg.rand_augment_prob):
            pil = self.rand_augment(pil)
        return pil

    def non_spatial(self, pil: Image.Image) -> Image.Image:
        """Colour jitter, blur, solarize, grey: ops that move no pixel."""
        if self.jitter is not None:
            pil = self.jitter(pil)
        if self._chance(self.cfg.blur_prob):
            low, high = self.cfg.blur_radius
            pil = pil.filter(ImageFilter.GaussianBlur(radius=low + (high - low) * float(torch.rand(()))))
        if self._chance(self.cfg.solarize_prob):
            pil = ImageOps.solarize(pil)
        if pil.mode == "RGB" and self._chance(self.cfg.grey_prob):
            pil = pil.convert("L").convert("RGB")
        return pil

    def __call__(self, image: Tensor | Image.Image) -> tuple[Tensor, Tensor]:
        weak = self.weak_view(image)
        teacher = pil_to_unit_tensor(weak)
        student = pil_to_unit_tensor(self.non_spatial(weak)) if self._chance(self.cfg.strong_prob) else teacher
        if self.erase is not None:
            student = self.erase(student)
        return teacher, student
