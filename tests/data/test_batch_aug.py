"""The batched multi-crop (data/batch_aug.py) against the per-image PIL path: the same distributions of crop boxes,
colours, flips, grayscale, solarize, RandAugment and erasing; exact look-up-table ops; shapes, determinism, errors.

Tolerances are a few standard errors of the sample sizes used, so a wrong range or probability fails them.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data.random_erasing import RandomErasing
from torchvision import transforms
from torchvision.transforms import RandomResizedCrop

from vitlab.data import DataError
from vitlab.data.batch_aug import (
    BatchMultiCrop,
    _affine_sample,
    _autocontrast_lut,
    _equalize_lut,
    _lut_gather,
    color_jitter,
    gaussian_blur,
    horizontal_flip,
    parse_rand_augment,
    rand_augment,
    random_erasing,
    random_grayscale,
    sample_crop_boxes,
    solarize,
    weak_pipeline,
)
from vitlab.data.transforms import _rand_augment, pil_to_unit_tensor


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _colour_image(size: int = 16, seed: int = 0) -> torch.Tensor:
    """A smooth, colourful (3, size, size) image in [0, 1] (quantised to uint8 levels)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 4, generator=g)
    image = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0]
    return torch.round(image * 255) / 255


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = np.rint(image.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
    return Image.fromarray(array[:, :, 0], mode="L") if array.shape[2] == 1 else Image.fromarray(array, mode="RGB")


# ---- RandomResizedCrop -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height, width, scale", [(64, 64, (0.25, 1.0)), (48, 80, (0.05, 0.25)), (16, 16, (0.4, 1.0))])
def test_crop_boxes_follow_torchvision(height: int, width: int, scale: tuple[float, float]) -> None:
    ratio = (3 / 4, 4 / 3)
    boxes = sample_crop_boxes(20000, height, width, scale, ratio, _gen()).double()
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    torch.manual_seed(0)
    reference = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), list(ratio))
                              for _ in range(4000)], dtype=torch.float64)
    ref_top, ref_left, ref_h, ref_w = reference.unbind(1)
    area, ref_area = h * w / (height * width), ref_h * ref_w / (height * width)
    log_ratio, ref_log_ratio = torch.log(w / h), torch.log(ref_w / ref_h)
    # the same distribution functions (the areas are discrete on small images, so compare CDFs, not quantiles)
    for ours, theirs in ((area, ref_area), (log_ratio, ref_log_ratio)):
        for t in theirs.quantile(torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)):
            assert abs(float((ours <= t).double().mean() - (theirs <= t).double().mean())) < 0.03
    assert abs(float(area.mean() - ref_area.mean())) < 0.015
    assert abs(float(log_ratio.std() - ref_log_ratio.std())) < 0.02
    # the box position is uniform over the free room, as torchvision's randint
    room = (height - h).clamp(min=1)
    assert abs(float((top / room)[height - h > 4].mean()) - 0.5) < 0.02
    ref_room = (height - ref_h).clamp(min=1)
    assert abs(float((top / room)[height - h > 4].mean() - (ref_top / ref_room)[height - ref_h > 4].mean())) < 0.03


def test_the_area_range_and_log_uniform_ratio_are_those_asked_for() -> None:
    # a large image, so that rounding hardly matters: area fraction ~ U(0.25, 1) where it fits, log-ratio uniform
    boxes = sample_crop_boxes(40000, 1000, 1000, (0.25, 1.0), (3 / 4, 4 / 3), _gen(1)).double()
    area = boxes[:, 2] * boxes[:, 3] / 1e6
    log_ratio = torch.log(boxes[:, 3] / boxes[:, 2])
    assert float(area.min()) >= 0.249 and float(area.max()) <= 1.0
    small = area[area < 0.6]  # below 0.6 every try fits: uniform on [0.25, 0.6)
    assert abs(float(small.mean()) - 0.425) < 0.005
    low = log_ratio[area < 0.5]
    span = math.log(4 / 3) - math.log(3 / 4)
    assert abs(float(low.mean())) < 0.005 and abs(float(low.std()) - span / math.sqrt(12)) < 0.005
    assert float(log_ratio.min()) >= math.log(3 / 4) - 0.01 and float(log_ratio.max()) <= math.log(4 / 3) + 0.01


def test_the_fallback_is_torchvisions_central_crop() -> None:
    # no try can fit (every area rounds to 0 px): torchvision falls back to the central crop clipped to the ratio
    for height, width in ((4, 4), (4, 10), (10, 4)):
        boxes = sample_crop_boxes(5, height, width, (0.001, 0.002), (3 / 4, 4 / 3), _gen())
        expected = RandomResizedCrop.get_params(torch.empty(1, height, width), [0.001, 0.002], [3 / 4, 4 / 3])
        assert all(tuple(b) == tuple(expected) for b in boxes.tolist()), (height, width, boxes[0], expected)


# ---- colour: the jitter, grayscale, solarize, blur -------------------------------------------------------------------
def _brightness_saturation(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: mean value and mean HSV saturation ((max - min) / max)."""
    maxc, minc = images.amax(dim=1), images.amin(dim=1)
    saturation = torch.where(maxc > 0, (maxc - minc) / maxc.clamp_min(1e-6), torch.zeros_like(maxc))
    return images.mean(dim=(1, 2, 3)), saturation.mean(dim=(1, 2))


def test_colour_jitter_statistics_match_torchvision_on_pil() -> None:
    image = _colour_image()
    pil = _to_pil(image)
    jitter = transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)
    torch.manual_seed(0)
    reference = torch.stack([pil_to_unit_tensor(jitter(pil)) for _ in range(1500)])
    batched = color_jitter(image.expand(4000, -1, -1, -1), 0.4, 0.4, 0.2, 0.1, 1.0, _gen())
    for ours, theirs in zip(_brightness_saturation(batched), _brightness_saturation(reference)):
        assert abs(float(ours.mean() - theirs.mean())) < 0.01
        assert float(ours.std()) == pytest.approx(float(theirs.std()), rel=0.1)
    # the per-pixel hue shift: mean absolute change of the channel differences, a hue-only statistic
    hue_only = color_jitter(image.expand(4000, -1, -1, -1), 0.0, 0.0, 0.0, 0.1, 1.0, _gen())
    torch.manual_seed(0)
    hue_ref = torch.stack([pil_to_unit_tensor(transforms.ColorJitter(hue=0.1)(pil)) for _ in range(1500)])
    change, ref_change = ((x - image).abs().mean(dim=(1, 2, 3)) for x in (hue_only, hue_ref))
    assert float(change.mean()) == pytest.approx(float(ref_change.mean()), rel=0.1)


def test_jitter_on_one_channel_changes_only_brightness_and_contrast() -> None:
    grey = _colour_image()[:1]
    out = color_jitter(grey.expand(2000, -1, -1, -1), 0.0, 0.0, 0.2, 0.1, 1.0, _gen())
    assert torch.equal(out, grey.expand_as(out))  # saturation and hue: no-ops on grey images, as on PIL mode L
    torch.manual_seed(0)
    pil = _to_pil(grey)
    jitter = transforms.ColorJitter(0.4, 0.4)
    reference = torch.stack([pil_to_unit_tensor(jitter(pil)) for _ in range(1500)]).mean(dim=(1, 2, 3))
    ours = color_jitter(grey.expand(4000, -1, -1, -1), 0.4, 0.4, 0.0, 0.0, 1.0, _gen()).mean(dim=(1, 2, 3))
    assert abs(float(ours.mean() - reference.mean())) < 0.01
    assert float(ours.std()) == pytest.approx(float(reference.std()), rel=0.1)


def test_the_weak_pipeline_matches_the_pil_weak_pipeline_in_colour() -> None:
    from vitlab.data.multicrop import MultiCropTransform

    image = _colour_image(32, seed=3)
    pil_path = MultiCropTransform(16, 8, 0, (0.25, 1.0), (0.05, 0.25), 0.0, 0.5, 3, (0.5,) * 3, (0.25,) * 3)
    random.seed(0)
    torch.manual_seed(0)
    pil = _to_pil(image)
    reference = torch.stack([pil_to_unit_tensor(pil_path.weak_global[1](pil)) for _ in range(800)])
    ours = weak_pipeline(image.expand(3000, -1, -1, -1), 16, (0.25, 1.0), 0.5, 0.1, 0.2, _gen())
    assert ours.shape == (3000, 3, 16, 16) and ours.dtype == torch.float32
    for a, b in zip(_brightness_saturation(ours), _brightness_saturation(reference)):
        assert abs(float(a.mean() - b.mean())) < 0.015
        assert float(a.std()) == pytest.approx(float(b.std()), rel=0.12)


def test_flip_grayscale_jitter_solarize_and_blur_probabilities() -> None:
    n = 8000
    image = _colour_image()
    batch = image.expand(n, -1, -1, -1)
    flipped = horizontal_flip(batch, 0.5, _gen(1))
    assert torch.equal(flipped.flip(-1)[(flipped != batch).flatten(1).any(1)], batch[:1].expand(-1, -1, -1, -1)
                       .repeat(int((flipped != batch).flatten(1).any(1).sum()), 1, 1, 1))
    assert float((flipped != batch).flatten(1).any(1).float().mean()) == pytest.approx(0.5, abs=0.02)
    grey = random_grayscale(batch, 0.2, _gen(2))
    is_grey = (grey[:, 0] == grey[:, 1]).flatten(1).all(1) & (grey[:, 1] == grey[:, 2]).flatten(1).all(1)
    assert float(is_grey.float().mean()) == pytest.approx(0.2, abs=0.015)
    luma = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    torch.testing.assert_close(grey[is_grey][0, 0], luma)  # PIL's L weights
    jittered = color_jitter(batch, 0.4, 0.4, 0.2, 0.1, 0.8, _gen(3))
    assert float((jittered == batch).flatten(1).all(1).float().mean()) == pytest.approx(0.2, abs=0.015)
    sol = solarize(batch, 0.2, _gen(4))
    changed = (sol != batch).flatten(1).any(1)
    assert float(changed.float().mean()) == pytest.approx(0.2, abs=0.015)
    expected = torch.where(image >= 128 / 255, 1 - image, image)  # PIL: levels >= 128 are inverted
    torch.testing.assert_close(sol[changed][0], expected)
    blurred = gaussian_blur(batch, 0.5, _gen(5))
    assert float((blurred != batch).flatten(1).any(1).float().mean()) == pytest.approx(0.5, abs=0.02)


def test_blur_keeps_the_mean_and_its_width_follows_sigma() -> None:
    point = torch.zeros(2000, 1, 31, 31)
    point[:, :, 15, 15] = 1.0
    out = gaussian_blur(point, 1.0, _gen())
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), torch.ones(2000))
    coords = torch.arange(31, dtype=torch.float64) - 15
    spread = (out[:, 0].sum(dim=1).double() * coords.square()).sum(dim=1).sqrt()  # along one axis
    # a sampled Gaussian of sigma s has this spread; s ~ U(0.1, 2.0) gives the mean below
    sigmas = torch.linspace(0.1, 2.0, 2001, dtype=torch.float64)[:, None]
    weights = torch.exp(-0.5 * (torch.arange(-6, 7, dtype=torch.float64)[None] / sigmas) ** 2)
    expected = ((weights * torch.arange(-6, 7)[None] ** 2).sum(1) / weights.sum(1)).sqrt()
    assert float(spread.max()) <= float(expected.max()) + 1e-3
    assert float(spread.mean()) == pytest.approx(float(expected.mean()), abs=0.03)
    assert float((spread > 1.0).double().mean()) == pytest.approx(float((expected > 1.0).double().mean()), abs=0.03)


# ---- RandAugment -----------------------------------------------------------------------------------------------------
def _uint8_images(n: int, channels: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(30, 220, (n, channels, size, size), generator=g).float()


@pytest.mark.parametrize("channels", [1, 3])
def test_equalize_and_autocontrast_are_pils(channels: int) -> None:
    images = _uint8_images(6, channels)
    images[0] = 100.0  # one level: equalize keeps it
    images[1] = images[1].clamp(90, 110)
    for lut_fn, pil_fn in ((_equalize_lut, ImageOps.equalize), (_autocontrast_lut, ImageOps.autocontrast)):
        ours = _lut_gather(images, lut_fn(images))
        theirs = torch.stack([pil_to_unit_tensor(pil_fn(_to_pil(x / 255))) * 255 for x in images])
        torch.testing.assert_close(ours, torch.round(theirs), rtol=0, atol=0)


def test_an_integer_translation_is_pils_affine_with_its_fill() -> None:
    images = _uint8_images(2, 3)
    matrix = torch.tensor([[1, 0, 4.0, 0, 1, 0], [1, 0, 0, 0, 1, -3.0]])
    fill = (10, 20, 30)
    ours = _affine_sample(images, matrix, torch.tensor(fill, dtype=torch.float32), "bilinear")
    for k in range(2):
        data = tuple(float(v) for v in matrix[k])
        pil = _to_pil(images[k] / 255).transform((16, 16), Image.AFFINE, data, resample=Image.BILINEAR,
                                                    fillcolor=fill)
        torch.testing.assert_close(ours[k], torch.round(pil_to_unit_tensor(pil) * 255), rtol=0, atol=0)


def test_rand_augment_changes_images_as_often_and_as_much_as_timms() -> None:
    images = _uint8_images(1, 3, size=24, seed=4).expand(3000, -1, -1, -1)
    ours = rand_augment(images, parse_rand_augment("rand-m9-mstd0.5-inc1"), (128, 128, 128), _gen())
    assert ours.shape == images.shape and float(ours.min()) >= 0 and float(ours.max()) <= 255
    assert torch.equal(ours, torch.round(ours))  # uint8 levels, as PIL
    timm_ra = _rand_augment("rand-m9-mstd0.5-inc1", 24, 3, (0.5, 0.5, 0.5))
    random.seed(0)
    np.random.seed(0)
    pil = _to_pil(images[0] / 255)
    theirs = torch.stack([pil_to_unit_tensor(timm_ra(pil)) * 255 for _ in range(1200)])
    unchanged, ref_unchanged = ((x == images[0]).flatten(1).all(1).float().mean() for x in (ours, theirs))
    # both layers skipped (0.25) or drawing ops that leave this image alone (e.g. posterize of nothing)
    assert float(unchanged) == pytest.approx(float(ref_unchanged), abs=0.04)
    change, ref_change = ((x - images[0]).abs().mean(dim=(1, 2, 3)) for x in (ours, theirs))
    assert float(change.mean()) == pytest.approx(float(ref_change.mean()), rel=0.12)
    assert float((change > 40).float().mean()) == pytest.approx(float((ref_change > 40).float().mean()), abs=0.04)


def test_rand_augment_strings() -> None:
    spec = parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert (spec.magnitude, spec.magnitude_std, spec.num_layers, spec.prob) == (9, 0.5, 2, 0.5)
    assert parse_rand_augment("rand-m7-n3-p0.3-inc1").num_layers == 3
    for bad in ("rand-m9-mstd0.5", "rand-m9-inc1-tweights", "auto-m9-inc1", "rand-m9-mstd101-inc1"):
        with pytest.raises(DataError, match=r"^method\.crops\.rand_augment: got .*backend=pil$"):
            parse_rand_augment(bad)


# ---- RandomErasing ---------------------------------------------------------------------------------------------------
def test_erasing_probability_and_areas_follow_timm() -> None:
    n, size = 4000, 32
    canvas = torch.full((n, 3, size, size), float("nan"))
    ours = random_erasing(canvas, 0.25, (0.5,) * 3, (0.25,) * 3, _gen())
    erased = ~torch.isnan(ours[:, 0])
    random.seed(0)
    torch.manual_seed(0)
    timm_erasing = RandomErasing(0.25, mode="pixel", device="cpu")
    reference = torch.stack([timm_erasing(torch.full((3, size, size), float("nan"))) for _ in range(2000)])
    ref_erased = ~torch.isnan(reference[:, 0])
    hit, ref_hit = erased.flatten(1).any(1), ref_erased.flatten(1).any(1)
    assert float(hit.float().mean()) == pytest.approx(float(ref_hit.float().mean()), abs=0.03)
    assert float(hit.float().mean()) == pytest.approx(0.25, abs=0.02)
    area = erased.flatten(1).float().mean(1)[hit]
    ref_area = ref_erased.flatten(1).float().mean(1)[ref_hit]
    assert float(area.mean()) == pytest.approx(float(ref_area.mean()), rel=0.08)
    assert float(area.max()) <= 1 / 3 + 0.05
    fill = ours[:, 0][erased]
    assert 0.0 <= float(fill.min()) and float(fill.max()) <= 1.0 and abs(float(fill.mean()) - 0.5) < 0.01


# ---- the whole multi-crop --------------------------------------------------------------------------------------------
def _multicrop(**kwargs: object) -> BatchMultiCrop:
    args: dict = {"global_size": 16, "local_size": 8, "local_crops": 3, "global_scale": (0.4, 1.0),
                  "local_scale": (0.1, 0.4), "strong_prob": 0.5, "hflip": 0.0, "channels": 1, "mean": (0.5,),
                  "std": (0.25,)}
    return BatchMultiCrop(**{**args, **kwargs})


def test_shapes_dtypes_and_ranges_for_uint8_and_float_batches() -> None:
    images = torch.randint(0, 256, (12, 1, 20, 20), generator=_gen()).to(torch.uint8)
    for batch in (images, images.float() / 255):
        out = _multicrop()(batch, _gen())
        assert out["teacher_globals"].shape == (12, 2, 1, 16, 16) and out["student_globals"].shape == (12, 2, 1, 16, 16)
        assert out["student_locals"].shape == (12, 3, 1, 8, 8) and out["weak_flag"].shape == (12,)
        assert out["weak_flag"].dtype == torch.bool
        for key in ("teacher_globals", "student_globals", "student_locals"):
            assert out[key].dtype == torch.float32 and 0 <= float(out[key].min()) and float(out[key].max()) <= 1
    # uint8 and the same images as floats give the same crops from the same generator
    a, b = _multicrop()(images, _gen(3)), _multicrop()(images.float() / 255, _gen(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "student_locals" not in _multicrop(local_crops=0)(images, _gen())
    assert _multicrop(strong_prob=0.0)(images, _gen())["weak_flag"].all()
    assert not _multicrop(strong_prob=1.0)(images, _gen())["weak_flag"].any()


def test_the_weak_flag_follows_the_strong_probability_and_student_crops_are_fresh() -> None:
    images = torch.randint(0, 256, (4000, 1, 16, 16), generator=_gen()).to(torch.uint8)
    out = _multicrop(strong_prob=0.3, local_crops=1)(images, _gen())
    assert float(out["weak_flag"].float().mean()) == pytest.approx(0.7, abs=0.02)
    assert not torch.equal(out["teacher_globals"], out["student_globals"])


def test_the_same_generator_seed_gives_the_same_crops() -> None:
    images = torch.randint(0, 256, (8, 3, 24, 24), generator=_gen()).to(torch.uint8)
    crops = _multicrop(channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.2), hflip=0.5)
    first, again, other = crops(images, _gen(7)), crops(images, _gen(7)), crops(images, _gen(8))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["student_locals"], other["student_locals"])


def test_bad_parameters_raise_one_line_errors() -> None:
    with pytest.raises(DataError, match=r"^method\.crops\.local_scale: got \[0\.5, 0\.1\]"):
        _multicrop(local_scale=(0.5, 0.1))
    with pytest.raises(DataError, match=r"^method\.crops\.global_scale"):
        _multicrop(global_scale=(0.0, 1.0))
    with pytest.raises(DataError, match="must be probabilities"):
        _multicrop(strong_prob=1.5)
    with pytest.raises(DataError, match="one mean and std per channel"):
        _multicrop(channels=3)
    with pytest.raises(DataError, match=r"method\.crops\.rand_augment"):
        _multicrop(rand_augment="rand-m9")
    with pytest.raises(DataError, match=r"expected \(B, 1, H, W\)"):
        _multicrop()(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), _gen())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_crops_run_on_the_batch_device() -> None:
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8, device="cuda")
    out = _multicrop()(images, torch.Generator(device="cuda").manual_seed(0))
    assert all(v.device.type == "cuda" for v in out.values())


@pytest.mark.parametrize("channels", [1, 3])
def test_every_output_matches_the_per_image_multicrop_in_distribution(channels: int) -> None:
    """Teacher, student and local crops of one image, weak and strong pipelines mixed (RandAugment and erasing
    included): the per-crop mean and spread of intensities agree with MultiCropTransform's."""
    from vitlab.data.multicrop import MultiCropTransform

    image = _colour_image(24, seed=5)[:channels]
    args = (16, 8, 2, (0.25, 1.0), (0.05, 0.4), 0.5, 0.5, channels, (0.5,) * channels, (0.25,) * channels)
    per_image = MultiCropTransform(*args)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    pil = _to_pil(image)
    items = [per_image(pil) for _ in range(600)]
    ours = BatchMultiCrop(*args)((image.expand(2000, -1, -1, -1) * 255).round().to(torch.uint8), _gen())
    assert float(ours["weak_flag"].float().mean()) == pytest.approx(
        float(np.mean([item["weak_flag"] for item in items])), abs=0.06)
    for key in ("teacher_globals", "student_globals", "student_locals"):
        theirs = torch.stack([item[key] for item in items]).flatten(0, 1)
        mine = ours[key].flatten(0, 1)
        for stat in (lambda x: x.mean(dim=(1, 2, 3)), lambda x: x.std(dim=(1, 2, 3))):
            a, b = stat(mine), stat(theirs)
            assert abs(float(a.mean() - b.mean())) < 0.015, key
            assert float(a.std()) == pytest.approx(float(b.std()), rel=0.15), key
