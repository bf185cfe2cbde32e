"""The Mugs / DINO multi-crop augmentation as batched tensor operations, on whatever device the batch is on.

:class:`BatchMultiCrop` takes a batch of plain images (B, C, H, W), uint8 or float in [0, 1], and returns what
:class:`~vitlab.data.multicrop.MultiCropTransform` returns per image, stacked: the same pipelines with the same
parameter distributions (specs/mugs.md §2.2), drawn from one :class:`torch.Generator` per call, with no Python loop
over the items. Every operation below is also usable on its own.

Faithful to the per-image (PIL) path: RandomResizedCrop's parameters (torchvision's 10 tries, then the central
fallback), flip, ColorJitter's random order and factor ranges with PIL's degenerate images (black, the rounded grey
mean, the grey image), grayscale, Gaussian blur sigma U(0.1, 2), solarize at 128, timm's RandAugment
(``rand-mM-nN-mstdS-incI-pP``; ops, magnitudes, signs, fill and the random bilinear / bicubic choice) on uint8 values,
and timm's RandomErasing ("pixel" mode). Differences that change pixels but not the parameter distributions:

- resampling is ``grid_sample`` (bicubic with a = -0.75 where PIL uses a = -0.5; a box average of k × k bicubic
  samples where the crop is shrunk, PIL's anti-aliasing being a wider kernel), and the weak pipeline keeps float
  values between its operations where PIL rounds to uint8 after each;
- the blur is an exact Gaussian (13 taps, edge pixels replicated); PIL approximates it by three box blurs;
- ColorJitter's hue shift is continuous; PIL's is quantised to 1/255 of the circle.

Nothing here normalises: images stay in [0, 1] and the model wrapper normalises (as for the per-image path).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.data.dataset import DataError

__all__ = ["BatchMultiCrop", "RandAugmentSpec", "color_jitter", "gaussian_blur", "horizontal_flip",
           "parse_rand_augment", "rand_augment", "random_erasing", "random_grayscale", "resized_crop",
           "sample_crop_boxes", "solarize", "weak_pipeline"]

GREY_WEIGHTS = (0.299, 0.587, 0.114)  # PIL's (and torchvision's) RGB -> L
BLUR_SIGMA = (0.1, 2.0)  # DINO's PIL radius range
BLUR_RADIUS = 6  # taps each side: 3 sigma at the largest sigma
# timm's "increasing" RandAugment ops (``_RAND_INCREASING_TRANSFORMS``), in timm's order.
RA_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
          "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
          "TranslateXRel", "TranslateYRel")


def _uniform(shape: tuple[int, ...], low: float | Tensor, high: float | Tensor, generator: torch.Generator,
             device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def _bernoulli(n: int, p: float | Tensor, generator: torch.Generator, device: torch.device) -> Tensor:
    """(n,) bool, True with probability ``p`` (``random.random() < p``; ``p`` a number or one per item)."""
    return torch.rand(n, generator=generator, device=device) < p


def _grey(images: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma; one channel passes through."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(1)
    return (GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b).unsqueeze(1)


def _rows(mask: Tensor) -> Tensor:
    """(N,) bool -> (N, 1, 1, 1) for ``torch.where`` over images."""
    return mask.view(-1, 1, 1, 1)


# ---- RandomResizedCrop -----------------------------------------------------------------------------------------------
def sample_crop_boxes(n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                      generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for ``n`` items at once: (n, 4) long (top, left, h, w).

    Ten tries per item of an area U(scale) · H · W and a log-uniform aspect ratio; the first try that fits wins; items
    with none fall back to the central crop clipped to the ratio range (torchvision's fallback).
    """
    device = torch.device(device)
    tries = 10
    area = height * width
    target = area * _uniform((n, tries), scale[0], scale[1], generator, device)
    aspect = torch.exp(_uniform((n, tries), math.log(ratio[0]), math.log(ratio[1]), generator, device))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first fitting try (0 when none fits)
    found = fits.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = round(height * max(ratio)), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    u = torch.rand((n, 2), generator=generator, device=device)
    top = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), torch.full_like(h, (height - fallback_h) // 2))
    left = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), torch.full_like(w, (width - fallback_w) // 2))
    return torch.stack([top, left, h, w], dim=1).long()


def resized_crop(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop every item's box and resize it to ``size`` × ``size``, bicubic, in one ``grid_sample``.

    Args:
        images: (N, C, H, W) float.
        boxes: (N, 4) (top, left, h, w) in pixels, as :func:`sample_crop_boxes` returns.
        size: output side.

    Returns (N, C, size, size), clamped to [0, 1]. Where a box can be larger than ``size`` (k = ceil(max(H, W) /
    size) > 1), each output pixel averages k × k bicubic samples: an anti-aliased shrink.
    """
    n, _, height, width = images.shape
    k = max(1, math.ceil(max(height, width) / size))
    steps = (torch.arange(size * k, device=images.device, dtype=images.dtype) + 0.5) / (size * k)
    top, left, h, w = boxes.to(images.dtype).unbind(1)
    x = left[:, None] + steps[None] * w[:, None]  # (N, S) continuous coordinates, pixel centres at +0.5
    y = top[:, None] + steps[None] * h[:, None]
    gx = (2 * x / width - 1)[:, None, :].expand(n, size * k, size * k)
    gy = (2 * y / height - 1)[:, :, None].expand(n, size * k, size * k)
    out = F.grid_sample(images, torch.stack([gx, gy], dim=-1), mode="bicubic", padding_mode="border",
                        align_corners=False)
    if k > 1:
        out = F.avg_pool2d(out, k)
    return out.clamp_(0.0, 1.0)


# ---- the weak (DINO) operations --------------------------------------------------------------------------------------
def horizontal_flip(images: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Each item flipped left-right with probability ``p``. (N, C, H, W) -> same."""
    if p <= 0:
        return images
    flip = _bernoulli(images.shape[0], p, generator, images.device)
    return torch.where(_rows(flip), images.flip(-1), images)


def _rgb_to_hsv(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = images.unbind(1)
    maxc, _ = images.max(dim=1)
    minc, _ = images.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    return hue, sat, maxc


def _hsv_to_rgb(hue: Tensor, sat: Tensor, value: Tensor) -> Tensor:
    channels = []
    for n in (5.0, 3.0, 1.0):  # r, g, b
        k = (n + hue * 6.0) % 6.0
        channels.append(value - value * sat * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, dim=1)


def _shift_hue(images: Tensor, shift: Tensor) -> Tensor:
    hue, sat, value = _rgb_to_hsv(images)
    return _hsv_to_rgb((hue + shift.view(-1, 1, 1)) % 1.0, sat, value)


def color_jitter(images: Tensor, brightness: float, contrast: float, saturation: float, hue: float, p: float,
                 generator: torch.Generator) -> Tensor:
    """``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`` per item, on (N, C, H, W) in [0, 1].

    As torchvision on PIL images: factors U(1 ± brightness), U(1 ± contrast), U(1 ± saturation), U(± hue); the four
    operations in a random order per item; brightness blends with black, contrast with the rounded mean grey level,
    saturation with the grey image; saturation and hue leave one-channel images unchanged.
    """
    n, channels, device = images.shape[0], images.shape[1], images.device
    applied = _bernoulli(n, p, generator, device)
    order = torch.argsort(torch.rand((n, 4), generator=generator, device=device), dim=1)  # randperm(4) per item
    factors = [_uniform((n,), 1 - brightness, 1 + brightness, generator, device),
               _uniform((n,), 1 - contrast, 1 + contrast, generator, device),
               _uniform((n,), 1 - saturation, 1 + saturation, generator, device),
               _uniform((n,), -hue, hue, generator, device)]
    x = images
    for position in range(4):
        for op in range(4):
            if op >= 2 and channels == 1:  # saturation and hue: no-ops on grey images
                continue
            if (op == 0 and brightness == 0) or (op == 1 and contrast == 0) or (op == 2 and saturation == 0) or \
                    (op == 3 and hue == 0):
                continue
            chosen = applied & (order[:, position] == op)
            f = factors[op].view(-1, 1, 1, 1)
            if op == 0:
                result = x * f
            elif op == 1:
                mean = torch.round(_grey(x).mean(dim=(1, 2, 3), keepdim=True) * 255.0) / 255.0
                result = mean + f * (x - mean)
            elif op == 2:
                grey = _grey(x)
                result = grey + f * (x - grey)
            else:
                result = _shift_hue(x, factors[3])
            x = torch.where(_rows(chosen), result.clamp(0.0, 1.0), x)
    return x


def random_grayscale(images: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Each item replaced by its grey image (channels kept) with probability ``p``; one channel: unchanged."""
    applied = _bernoulli(images.shape[0], p, generator, images.device)
    if images.shape[1] == 1:
        return images
    return torch.where(_rows(applied), _grey(images).expand_as(images), images)


def gaussian_blur(images: Tensor, p: float | Tensor, generator: torch.Generator,
                  sigma: Sequence[float] = BLUR_SIGMA) -> Tensor:
    """Each item blurred with probability ``p`` (a number or one per item) by a Gaussian of sigma U(sigma) pixels
    (DINO's PIL GaussianBlur), separable, edge pixels replicated. (N, C, H, W) -> same."""
    n, c, height, width = images.shape
    applied = _bernoulli(n, p, generator, images.device)
    sigmas = _uniform((n,), sigma[0], sigma[1], generator, images.device)
    if not isinstance(p, Tensor) and p <= 0:
        return images
    taps = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / sigmas[:, None].to(images.dtype)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (N, taps)

    def band(side: int) -> Tensor:
        """(N, side, side): row i holds the weights of input pixels for output pixel i, edges replicated."""
        source = (torch.arange(side, device=images.device)[:, None] + taps.long()[None]).clamp_(0, side - 1)
        matrix = torch.zeros(n, side, side, device=images.device, dtype=images.dtype)
        return matrix.scatter_add_(2, source.expand(n, -1, -1), kernel[:, None, :].expand(n, side, -1))

    # Two banded matrix products (a separable blur per item) instead of a grouped convolution with N·C groups.
    x = band(height)[:, None] @ (images @ band(width).transpose(1, 2)[:, None])
    return torch.where(_rows(applied), x, images)


def solarize(images: Tensor, p: float | Tensor, generator: torch.Generator) -> Tensor:
    """Each item solarised with probability ``p`` (a number or one per item): values >= 128/255 (after uint8
    rounding) become 1 - value."""
    applied = _bernoulli(images.shape[0], p, generator, images.device)
    return torch.where(_rows(applied) & (images >= 0.5), 1.0 - images, images)


def weak_pipeline(images: Tensor, size: int, scale: Sequence[float], hflip: float, blur: float | Tensor,
                  solarize_p: float | Tensor, generator: torch.Generator) -> Tensor:
    """DINO's weak pipeline on (N, C, H, W) float in [0, 1]: RandomResizedCrop (ratio 3/4-4/3), flip,
    ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, blur p ``blur``, solarize p ``solarize_p`` (numbers, or
    (N,) tensors when the items come from different pipelines, e.g. global crops 1 and 2)."""
    if images.shape[0] == 0:
        return images.new_empty(0, images.shape[1], size, size)
    boxes = sample_crop_boxes(images.shape[0], images.shape[2], images.shape[3], scale, (3 / 4, 4 / 3), generator,
                              images.device)
    x = resized_crop(images, boxes, size)
    x = horizontal_flip(x, hflip, generator)
    x = color_jitter(x, 0.4, 0.4, 0.2, 0.1, 0.8, generator)
    x = random_grayscale(x, 0.2, generator)
    x = gaussian_blur(x, blur, generator)
    return solarize(x, solarize_p, generator) if isinstance(solarize_p, Tensor) or solarize_p > 0 else x


# ---- RandAugment (timm, "increasing" ops) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed timm RandAugment string: ``num_layers`` ops per image, each applied with probability ``prob`` at a
    magnitude N(``magnitude``, ``magnitude_std``) clipped to [0, 10]."""

    magnitude: float = 10.0
    num_layers: int = 2
    magnitude_std: float = 0.0
    prob: float = 0.5


def parse_rand_augment(config_str: str, key: str = "method.crops.rand_augment") -> RandAugmentSpec:
    """``rand-m9-mstd0.5-inc1`` -> :class:`RandAugmentSpec`. The batched ops are timm's increasing set, so ``inc1``
    is required; weighted choices (``t...``), ``mmax`` and uniform magnitudes (mstd > 100) are not batched."""
    parts = config_str.split("-")
    values: dict[str, float] = {}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|inc|m|n|p)(\d+(?:\.\d+)?)", part)
        if match is None:
            break
        values[match.group(1)] = float(match.group(2))
    else:
        if parts[0] == "rand" and values.get("inc") == 1 and values.get("mstd", 0.0) <= 100:
            return RandAugmentSpec(magnitude=values.get("m", 10.0), num_layers=int(values.get("n", 2)),
                                   magnitude_std=values.get("mstd", 0.0), prob=values.get("p", 0.5))
    raise DataError(f"{key}: got {config_str!r}, expected a timm RandAugment string of the increasing ops that the "
                    "batched crops implement, rand-m<M>[-n<N>][-mstd<S>][-p<P>]-inc1 (e.g. 'rand-m9-mstd0.5-inc1'); "
                    "other strings need method.crops.backend=pil")


def _lut_gather(images: Tensor, lut: Tensor) -> Tensor:
    """images (N, C, H, W) integer-valued 0..255 floats, lut (N, C, 256) -> images mapped through their rows."""
    n, c, height, width = images.shape
    index = images.reshape(n, c, -1).long().clamp_(0, 255)
    return lut.gather(2, index).view(n, c, height, width)


def _equalize_lut(images: Tensor) -> Tensor:
    """PIL ``ImageOps.equalize`` per item and channel as (N, C, 256) look-up tables."""
    n, c = images.shape[:2]
    index = images.reshape(n * c, -1).long().clamp_(0, 255)
    hist = torch.zeros(n * c, 256, device=images.device, dtype=torch.float64)
    hist.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))
    top = index.max(dim=1, keepdim=True).values
    step = torch.floor((hist.sum(dim=1, keepdim=True) - hist.gather(1, top)) / 255.0)
    before = torch.cumsum(hist, dim=1) - hist  # pixels below each level
    lut = torch.floor((torch.floor(step / 2) + before) / step.clamp_min(1.0)).clamp_(max=255.0)
    identity = torch.arange(256, device=images.device, dtype=torch.float64).expand_as(lut)
    keep = ((hist > 0).sum(dim=1, keepdim=True) <= 1) | (step == 0)
    return torch.where(keep, identity, lut).view(n, c, 256).to(images.dtype)


def _autocontrast_lut(images: Tensor) -> Tensor:
    """PIL ``ImageOps.autocontrast`` (cutoff 0) per item and channel as (N, C, 256) look-up tables."""
    flat = images.flatten(2).double()
    lo, hi = flat.min(dim=2, keepdim=True).values, flat.max(dim=2, keepdim=True).values
    levels = torch.arange(256, device=images.device, dtype=torch.float64)
    # tensor / tensor: IEEE division like Python's (a scalar / tensor multiplies by a reciprocal, 1 ulp off PIL's LUT)
    scale = torch.full_like(hi, 255.0) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    lut = torch.trunc(levels * scale - lo * scale).clamp_(0.0, 255.0)
    return torch.where(hi > lo, lut, levels.expand_as(lut)).to(images.dtype)


def _smooth(images: Tensor) -> Tensor:
    """PIL ``ImageFilter.SMOOTH`` (3 × 3, centre 5, others 1, / 13), rounded; border pixels unchanged."""
    n, c, height, width = images.shape
    kernel = torch.ones(3, 3, device=images.device, dtype=images.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    out = torch.round(F.conv2d(images, kernel, padding=1, groups=c))
    inner = torch.zeros(height, width, dtype=torch.bool, device=images.device)
    inner[1:-1, 1:-1] = True
    return torch.where(inner, out, images)


def _affine_sample(images: Tensor, matrix: Tensor, fill: Tensor, mode: str) -> Tensor:
    """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f))`` per item: output pixel centre (x, y) reads the input at
    (a x + b y + c, d x + e y + f); outside the image the fill. images (N, C, H, W), matrix (N, 6), fill (C,)."""
    n, _, height, width = images.shape
    ys = torch.arange(height, device=images.device, dtype=images.dtype) + 0.5
    xs = torch.arange(width, device=images.device, dtype=images.dtype) + 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    a, b, c, d, e, f = (m.view(n, 1, 1) for m in matrix.unbind(1))
    gx = 2 * (a * xx + b * yy + c) / width - 1
    gy = 2 * (d * xx + e * yy + f) / height - 1
    fill = fill.view(1, -1, 1, 1)
    out = F.grid_sample(images - fill, torch.stack([gx, gy], dim=-1), mode=mode, padding_mode="zeros",
                        align_corners=False) + fill
    return torch.round(out).clamp_(0.0, 255.0)


def rand_augment(images: Tensor, spec: RandAugmentSpec, fill: Sequence[int], generator: torch.Generator) -> Tensor:
    """timm's RandAugment (increasing ops, as built by ``rand_augment_transform``) per item, on uint8 values.

    Args:
        images: (N, C, H, W) float holding integers 0..255 (a uint8 image).
        spec: the parsed string (:func:`parse_rand_augment`).
        fill: the colour geometric ops bring in (timm's ``img_mean``: the data mean × 255, rounded), one per channel.
        generator: the randomness.

    Per layer each item draws one of the 15 ops (with replacement, as timm), applies it with probability ``prob`` at
    magnitude clip(N(m, mstd), 0, 10), with a random sign where timm negates, and a random bilinear / bicubic
    resampling for the geometric ops; posterize keeps at least one bit (as vitlab's per-image path). Returns the same
    shape, integer-valued floats.
    """
    n, channels, height, width = images.shape
    device, dtype = images.device, images.dtype
    fill_t = torch.tensor(list(fill), device=device, dtype=dtype)
    levels = torch.arange(256, device=device, dtype=dtype)
    x = images
    for _ in range(spec.num_layers):
        op = torch.randint(0, len(RA_OPS), (n,), generator=generator, device=device)
        applied = torch.rand(n, generator=generator, device=device) <= spec.prob
        magnitude = spec.magnitude + spec.magnitude_std * torch.randn(n, generator=generator, device=device)
        level = magnitude.clamp(0.0, 10.0) / 10.0
        sign = torch.where(torch.rand(n, generator=generator, device=device) > 0.5, -1.0, 1.0).to(dtype)
        bicubic = torch.rand(n, generator=generator, device=device) < 0.5
        chosen = [applied & (op == k) for k in range(len(RA_OPS))]

        # Look-up-table ops: autocontrast, equalize, invert, posterize, solarize, solarize-add.
        lut = levels.expand(n, channels, 256)
        bits = (4 - torch.floor(level.double() * 4)).clamp(min=1).to(dtype).view(n, 1, 1)
        step = torch.pow(2.0, 8 - bits)
        threshold = (256 - torch.clamp(torch.floor(level.double() * 256), max=256)).to(dtype).view(n, 1, 1)
        add = torch.clamp(torch.floor(level.double() * 110), max=128).to(dtype).view(n, 1, 1)
        candidates = {0: _autocontrast_lut(x), 1: _equalize_lut(x), 2: 255.0 - lut, 4: torch.floor(lut / step) * step,
                      5: torch.where(lut < threshold, lut, 255.0 - lut),
                      6: torch.where(lut < 128, torch.clamp(lut + add, max=255.0), lut)}
        for k, table in candidates.items():
            lut = torch.where(chosen[k].view(n, 1, 1), table, lut)
        x = _lut_gather(x, lut)

        # Enhance ops: blend with a degenerate image by a factor max(0.1, 1 ± 0.9 level).
        blend = chosen[7] | chosen[8] | chosen[9] | chosen[10]
        factor = torch.clamp(1.0 + sign * 0.9 * level, min=0.1).view(n, 1, 1, 1)
        grey = torch.round(_grey(x))
        mean = torch.floor(grey.mean(dim=(1, 2, 3), keepdim=True) + 0.5)
        degenerate = torch.where(_rows(chosen[7]), grey.expand_as(x),
                                 torch.where(_rows(chosen[8]), mean.expand_as(x),
                                             torch.where(_rows(chosen[9]), torch.zeros_like(x), _smooth(x))))
        blended = torch.floor(torch.clamp(degenerate + factor * (x - degenerate), 0.0, 255.0))
        x = torch.where(_rows(blend), blended, x)

        # Geometric ops: one affine sampling, identity for the items that draw another op.
        rotate = torch.deg2rad(-(level * 30.0 * sign))
        cos, sin = torch.cos(rotate), torch.sin(rotate)
        cx, cy = width / 2.0, height / 2.0
        shear, shift = level * 0.3 * sign, level * 0.45 * sign
        one, zero = torch.ones_like(level), torch.zeros_like(level)
        matrices = {3: [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy],
                    11: [one, shear, zero, zero, one, zero], 12: [one, zero, zero, shear, one, zero],
                    13: [one, zero, shift * width, zero, one, zero], 14: [one, zero, zero, zero, one, shift * height]}
        matrix = torch.stack([one, zero, zero, zero, one, zero], dim=1)
        for k, rows in matrices.items():
            matrix = torch.where(chosen[k].view(n, 1), torch.stack(rows, dim=1), matrix)
        geometric = chosen[3] | chosen[11] | chosen[12] | chosen[13] | chosen[14]
        moved = torch.where(_rows(bicubic), _affine_sample(x, matrix.to(dtype), fill_t, "bicubic"),
                            _affine_sample(x, matrix.to(dtype), fill_t, "bilinear"))
        x = torch.where(_rows(geometric), moved, x)
    return x


def random_erasing(images: Tensor, p: float, mean: Sequence[float], std: Sequence[float],
                   generator: torch.Generator) -> Tensor:
    """timm's ``RandomErasing(p, mode="pixel")`` per item in [0, 1] space: with probability ``p``, one box of area
    U(0.02, 1/3) of the image and log-uniform aspect 0.3-1/0.3 (ten tries, the first that fits) filled with
    mean + std · N(0, 1) per pixel, clamped to [0, 1]. (N, C, H, W) -> same."""
    n, c, height, width = images.shape
    device = images.device
    applied = _bernoulli(n, p, generator, device)
    target = height * width * _uniform((n, 10), 0.02, 1 / 3, generator, device)
    aspect = torch.exp(_uniform((n, 10), math.log(0.3), math.log(1 / 0.3), generator, device))
    h = torch.round(torch.sqrt(target * aspect))
    w = torch.round(torch.sqrt(target / aspect))
    fits = (w < width) & (h < height)
    first = fits.int().argmax(dim=1, keepdim=True)
    h, w = h.gather(1, first), w.gather(1, first)
    u = torch.rand((n, 2), generator=generator, device=device)
    top = torch.floor(u[:, :1] * (height - h + 1))
    left = torch.floor(u[:, 1:] * (width - w + 1))
    rows = torch.arange(height, device=device, dtype=h.dtype)
    cols = torch.arange(width, device=device, dtype=w.dtype)
    inside = (((rows >= top) & (rows < top + h))[:, :, None] & ((cols >= left) & (cols < left + w))[:, None, :])
    erase = (inside & (applied & fits.any(dim=1))[:, None, None]).unsqueeze(1)
    mean_t = torch.tensor(list(mean), device=device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), device=device, dtype=images.dtype).view(1, -1, 1, 1)
    noise = torch.randn(images.shape, generator=generator, device=device, dtype=images.dtype)
    return torch.where(erase, (mean_t + std_t * noise).clamp_(0.0, 1.0), images)


# ---- the multi-crop of Mugs ------------------------------------------------------------------------------------------
def _check_range(name: str, value: Sequence[float]) -> tuple[float, float]:
    if len(value) != 2 or not 0.0 < value[0] <= value[1] <= 1.0:
        raise DataError(f"{name}: got {list(value)}, expected [low, high] with 0 < low <= high <= 1")
    return float(value[0]), float(value[1])


class BatchMultiCrop:
    """Mugs' multi-crop (specs/mugs.md §2.2) on a batch: images (B, C, H, W) uint8 or float in [0, 1] ->
    ``{"teacher_globals": (B, 2, C, G, G), "student_globals": (B, 2, C, G, G), "student_locals": (B, n, C, L, L),
    "weak_flag": (B,) bool}``, floats in [0, 1] on the images' device (no ``student_locals`` when n is 0).

    The arguments are those of :class:`~vitlab.data.multicrop.MultiCropTransform`, and so are the distributions:
    teacher crops weak pipelines 1 (blur p 1) and 2 (blur p 0.1, solarize p 0.2); the student's two global crops
    both weak (pipelines 1 and 2) with probability ``1 - strong_prob``, else both strong (flip, RandAugment on the
    whole image, RandomResizedCrop, RandomErasing); each local crop weak (blur p 0.5) or strong with probability
    ``strong_prob``.
    """

    def __init__(self, global_size: int, local_size: int, local_crops: int, global_scale: Sequence[float],
                 local_scale: Sequence[float], strong_prob: float, hflip: float, channels: int,
                 mean: Sequence[float], std: Sequence[float], rand_augment: str = "rand-m9-mstd0.5-inc1",
                 random_erasing: float = 0.25) -> None:
        if global_size < 1 or local_size < 1 or local_crops < 0:
            raise DataError(f"multi-crop: global size {global_size}, local size {local_size} and local crop count "
                            f"{local_crops} must be positive (the count may be 0)")
        if not 0.0 <= strong_prob <= 1.0 or not 0.0 <= hflip <= 1.0 or not 0.0 <= random_erasing <= 1.0:
            raise DataError(f"multi-crop: strong_prob {strong_prob}, hflip {hflip} and random_erasing "
                            f"{random_erasing} must be probabilities")
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
            raise DataError(f"multi-crop: channels {channels} with mean {list(mean)} and std {list(std)}: expected 1 "
                            "or 3 channels and one mean and std per channel")
        self.global_size, self.local_size, self.local_crops = global_size, local_size, local_crops
        self.global_scale = _check_range("method.crops.global_scale", global_scale)
        self.local_scale = _check_range("method.crops.local_scale", local_scale)
        self.strong_prob, self.hflip, self.channels = strong_prob, hflip, channels
        self.mean, self.std = tuple(mean), tuple(std)
        self.rand_augment = parse_rand_augment(rand_augment) if rand_augment else None
        self.fill = tuple(round(255 * m) for m in mean)  # timm's img_mean, as the per-image path passes it
        self.random_erasing = random_erasing

    def _strong_crop(self, images255: Tensor, size: int, scale: tuple[float, float],
                     generator: torch.Generator) -> Tensor:
        """The strong pipeline after RandAugment: RandomResizedCrop, RandomErasing; (N, C, H, W) uint8 levels."""
        if images255.shape[0] == 0:
            return images255.new_empty(0, images255.shape[1], size, size)
        boxes = sample_crop_boxes(images255.shape[0], images255.shape[2], images255.shape[3], scale, (3 / 4, 4 / 3),
                                  generator, images255.device)
        x = resized_crop(images255 / 255.0, boxes, size)
        if self.random_erasing > 0:
            x = random_erasing(x, self.random_erasing, self.mean, self.std, generator)
        return x

    def __call__(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise DataError(f"multi-crop: images {tuple(images.shape)}, expected (B, {self.channels}, H, W)")
        # float32 throughout, also inside a mixed-precision step (the blur's matrix products would otherwise run in
        # half precision)
        with torch.autocast(images.device.type, enabled=False):
            if images.device.type != "cpu":
                return self._crops(images, generator)
            # On the CPU the kernels here are tiny: intra-op threads cost more to wake than they save (on a busy
            # 2-core machine a 16 x 16 x 64 sqrt took 16 ms on 2 threads and 3 us on 1), so the crops use one thread.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return self._crops(images, generator)
            finally:
                torch.set_num_threads(threads)

    def _crops(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        if images.dtype == torch.uint8:
            images255 = images.float()
        else:
            images255 = torch.round(images.float().clamp(0.0, 1.0) * 255.0)  # what the per-image path's PIL sees
        unit = images255 / 255.0
        batch, device = images.shape[0], images.device
        g, scale = self.global_size, self.global_scale
        weak_flag = torch.rand(batch, generator=generator, device=device) >= self.strong_prob
        weak_items = torch.nonzero(weak_flag).squeeze(1)
        strong_items = torch.nonzero(~weak_flag).squeeze(1)
        n_weak = weak_items.shape[0]

        # Every weak global crop in one pass: teacher views 1 and 2, then the weakly augmented student's views 1 and 2
        # (view 1: blur p 1; view 2: blur p 0.1, solarize p 0.2).
        def per_view(view1: float, view2: float) -> Tensor:
            counts = torch.tensor([batch, batch, n_weak, n_weak], device=device)
            values = torch.tensor([view1, view2, view1, view2], device=device)
            return values.repeat_interleave(counts)

        weak = weak_pipeline(torch.cat([unit, unit, unit[weak_items], unit[weak_items]]), g, scale, self.hflip,
                             per_view(1.0, 0.1), per_view(0.0, 0.2), generator)
        teacher1, teacher2, student1, student2 = weak.split([batch, batch, n_weak, n_weak])

        # Every strong crop shares flip + RandAugment on the whole image, then is cropped at its own size.
        n = self.local_crops
        source = torch.arange(batch, device=device).repeat_interleave(n)  # item of each local crop
        strong_local = torch.rand(batch * n, generator=generator, device=device) < self.strong_prob
        weak_crops = torch.nonzero(~strong_local).squeeze(1)
        strong_crops = torch.nonzero(strong_local).squeeze(1)
        n_strong, n_strong_local = strong_items.shape[0], strong_crops.shape[0]
        strong = horizontal_flip(torch.cat([images255[strong_items], images255[strong_items],
                                            images255[source[strong_crops]]]), self.hflip, generator)
        if self.rand_augment is not None and strong.shape[0] > 0:
            strong = rand_augment(strong, self.rand_augment, self.fill, generator)
        strong_global, strong_local_images = strong.split([2 * n_strong, n_strong_local])
        strong1, strong2 = self._strong_crop(strong_global, g, scale, generator).chunk(2)

        student = [torch.empty_like(teacher1), torch.empty_like(teacher2)]
        student[0][weak_items], student[1][weak_items] = student1, student2
        student[0][strong_items], student[1][strong_items] = strong1, strong2
        out = {"teacher_globals": torch.stack([teacher1, teacher2], dim=1),
               "student_globals": torch.stack(student, dim=1), "weak_flag": weak_flag}
        if n > 0:
            crops = torch.empty(batch * n, self.channels, self.local_size, self.local_size, device=device)
            crops[weak_crops] = weak_pipeline(unit[source[weak_crops]], self.local_size, self.local_scale, self.hflip,
                                              0.5, 0.0, generator)
            crops[strong_crops] = self._strong_crop(strong_local_images, self.local_size, self.local_scale, generator)
            out["student_locals"] = crops.view(batch, n, self.channels, self.local_size, self.local_size)
        return out
