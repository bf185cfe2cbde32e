from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vitlab.config import AugConfig, DataConfig
from vitlab.data import DataError, TrainTransform, build_dataset, build_mixup
from vitlab.data.transforms import pil_to_unit_tensor, posterize_keeping_one_bit, unit_tensor_to_pil


def _seed(value: int) -> None:
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


@pytest.mark.parametrize("channels", [1, 3])
def test_full_per_image_pipeline_keeps_shape_and_range(channels: int) -> None:
    _seed(0)
    aug = AugConfig(rand_augment="rand-m9-mstd0.5-inc1", hflip=0.5, random_crop_padding=4, random_erasing=0.5)
    transform = TrainTransform(aug, 32, channels, [0.3] * channels, [0.3] * channels)
    images = torch.rand(60, channels, 32, 32)
    changed = 0
    for image in images:
        original = image.clone()
        out = transform(image)
        assert out.shape == image.shape and out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert torch.equal(image, original)  # the input is never modified in place
        changed += int(not torch.allclose(out, image))
    assert changed >= 50


def test_rand_augment_at_full_magnitude_survives_posterize() -> None:
    _seed(1)
    transform = TrainTransform(AugConfig(rand_augment="rand-m10-n3-mstd0-inc1"), 16, 3, [0.5] * 3, [0.2] * 3)
    for _ in range(100):
        assert transform(torch.rand(3, 16, 16)).shape == (3, 16, 16)
    image = unit_tensor_to_pil(torch.rand(3, 8, 8))
    one_bit = pil_to_unit_tensor(posterize_keeping_one_bit(image, 0))
    assert set(torch.unique((one_bit * 255).round()).tolist()) <= {0.0, 128.0}


def test_tensor_pil_round_trip_is_exact_on_uint8_values() -> None:
    for channels in (1, 3):
        image = torch.randint(0, 256, (channels, 7, 5)).float() / 255
        assert torch.equal(pil_to_unit_tensor(unit_tensor_to_pil(image)), image)


def test_pad_and_crop_is_a_translation() -> None:
    _seed(2)
    transform = TrainTransform(AugConfig(random_crop_padding=3), 16, 1, [0.5], [0.2])
    image = torch.rand(1, 16, 16)
    padded = F.pad(image, (3, 3, 3, 3))
    offsets = set()
    for _ in range(40):
        out = transform(image)
        matches = [(top, left) for top in range(7) for left in range(7)
                   if torch.equal(out, padded[:, top:top + 16, left:left + 16])]
        assert matches
        offsets.add(matches[0])
    assert len(offsets) > 5


def test_horizontal_flip() -> None:
    image = torch.rand(3, 8, 8)
    assert torch.equal(TrainTransform(AugConfig(hflip=1.0), 8, 3, [0.5] * 3, [0.2] * 3)(image), image.flip(-1))
    assert not TrainTransform.is_active(AugConfig())
    assert not TrainTransform.is_active(AugConfig(mixup=0.8, cutmix=1.0))  # per batch, not per image


def test_random_erasing_fills_a_box_with_noise_in_range_and_keeps_the_rest() -> None:
    _seed(3)
    mean, std = [0.2, 0.4, 0.6], [0.3, 0.3, 0.3]
    transform = TrainTransform(AugConfig(random_erasing=1.0), 32, 3, mean, std)
    image = torch.full((3, 32, 32), 0.5)
    out = transform(image)
    erased = (out != 0.5).any(dim=0)
    assert 0.02 * 1024 * 0.5 < erased.sum() < 0.5 * 1024  # timm's area range: 2% to 1/3 of the image
    rows, cols = torch.nonzero(erased, as_tuple=True)
    box = erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.float().mean() > 0.95  # one rectangle
    assert out.min() >= 0 and out.max() <= 1
    noise = out[:, erased]
    assert torch.allclose(noise.mean(dim=1), torch.tensor(mean), atol=0.1)  # mean + std * N(0, 1), clipped


def test_invalid_rand_augment_string_is_an_error() -> None:
    with pytest.raises(DataError, match="data.aug.rand_augment"):
        TrainTransform(AugConfig(rand_augment="autoaugment"), 32, 3, [0.5] * 3, [0.2] * 3)
    with pytest.raises(DataError, match="data.aug.rand_augment"):
        TrainTransform(AugConfig(rand_augment="rand-q9"), 32, 3, [0.5] * 3, [0.2] * 3)


def _naive_smoothed_mix(labels: torch.Tensor, lam: float, num_classes: int, smoothing: float) -> torch.Tensor:
    """Mixed soft targets written out per row: lam * smooth(y_i) + (1 - lam) * smooth(y_{B-1-i})."""
    out = torch.zeros(len(labels), num_classes)
    for i in range(len(labels)):
        for k in range(num_classes):
            own = (1 - smoothing + smoothing / num_classes) if k == labels[i] else smoothing / num_classes
            partner_label = labels[len(labels) - 1 - i]
            partner = (1 - smoothing + smoothing / num_classes) if k == partner_label else smoothing / num_classes
            out[i, k] = lam * own + (1 - lam) * partner
    return out


def test_mixup_with_label_smoothing_matches_a_naive_computation() -> None:
    _seed(4)
    mixup = build_mixup(AugConfig(mixup=0.8), num_classes=10, label_smoothing=0.1)
    assert mixup is not None
    images = torch.rand(8, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    mixed, targets = mixup(images.clone(), labels)
    flipped = images.flip(0)
    # Recover lam from the pixels: mixed = lam * x + (1 - lam) * x.flip(0).
    diff = images - flipped
    lam = float(((mixed - flipped) * diff).sum() / diff.square().sum())
    assert torch.allclose(mixed, lam * images + (1 - lam) * flipped, atol=1e-5)
    assert torch.allclose(targets, _naive_smoothed_mix(labels, lam, 10, 0.1), atol=1e-5)
    assert mixed.min() >= 0 and mixed.max() <= 1


def test_cutmix_pastes_a_box_and_weights_targets_by_area() -> None:
    _seed(5)
    mixup = build_mixup(AugConfig(cutmix=1.0), num_classes=5, label_smoothing=0.0)
    assert mixup is not None
    images = torch.zeros(4, 1, 20, 20)
    images[1] = 1.0  # pairs (0, 3) and (1, 2): only image 2 receives a box of ones, from image 1
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = mixup(images.clone(), labels)
    area = float(mixed[2].mean())
    assert ((mixed == 0) | (mixed == 1)).all()  # pasted, not blended
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    assert targets[2, 1] == pytest.approx(area, abs=1e-6) and targets[2, 2] == pytest.approx(1 - area, abs=1e-6)


def test_build_mixup_off_and_errors() -> None:
    assert build_mixup(AugConfig(), num_classes=10, label_smoothing=0.1) is None
    with pytest.raises(DataError, match="label_smoothing"):
        build_mixup(AugConfig(mixup=0.2), num_classes=10, label_smoothing=1.5)
    both = build_mixup(AugConfig(mixup=0.8, cutmix=1.0, mixup_prob=0.5, mixup_switch_prob=0.3), 7, 0.0)
    assert both is not None and (both.mix_prob, both.switch_prob, both.num_classes) == (0.5, 0.3, 7)


def test_augmented_digits_through_a_data_loader() -> None:
    _seed(6)
    aug = AugConfig(rand_augment="rand-m9-mstd0.5-inc1", random_crop_padding=2, random_erasing=0.25, mixup=0.8,
                    cutmix=1.0)
    cfg = DataConfig(name="digits", train_per_class=4, aug=aug)
    dataset = build_dataset(cfg, "train", train=True)
    batch = next(iter(DataLoader(dataset, batch_size=16, shuffle=True)))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["label"].dtype == torch.int64
    mixup = build_mixup(aug, dataset.num_classes, label_smoothing=0.1)
    assert mixup is not None
    images, targets = mixup(batch["image"], batch["label"])
    assert images.shape == (16, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert targets.shape == (16, 10) and torch.allclose(targets.sum(dim=1), torch.ones(16))
    assert targets.min() >= 0.1 / 10 - 1e-6


def test_random_resized_crop_keeps_size_and_with_full_scale_is_near_identity() -> None:
    import torch

    from vitlab.config import AugConfig
    from vitlab.data.transforms import TrainTransform

    torch.manual_seed(0)
    image = torch.rand(3, 32, 32)
    crop = TrainTransform(AugConfig(rrc_scale=[0.3, 0.6]), 32, 3, (0.5,) * 3, (0.25,) * 3)
    out = crop(image)
    assert out.shape == image.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert not torch.allclose(out, image)
    # the area range [1, 1] with ratio drawn in 3/4..4/3 can only be the whole image (torchvision's fallback)
    whole = TrainTransform(AugConfig(rrc_scale=[1.0, 1.0]), 32, 3, (0.5,) * 3, (0.25,) * 3)
    torch.testing.assert_close(whole(image), image, atol=1e-6, rtol=0)
