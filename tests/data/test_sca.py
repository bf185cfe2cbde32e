"""Spatial-consistent augmentation: teacher and student see the same geometry (specs/sun.md §5 "SCA")."""

from __future__ import annotations

import random

import pytest
import torch

from vitlab.data.dataset import DataError
from vitlab.data.sca import SCAConfig, SpatialConsistentAugmentation

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _planted(size: int = 32) -> torch.Tensor:
    image = torch.zeros(3, size, size)
    image[:, 17:20, 9:12] = 0.4  # a grey blob on black: below the solarize threshold, so no op can erase it
    return image


def _blob_location(view: torch.Tensor) -> tuple[float, float]:
    """The centroid (row, column) of the pixels that differ from the background (the corner pixel)."""
    weight = (view - view[:, :1, :1]).abs().sum(0)
    weight = torch.where(weight > 0.2 * weight.max(), weight, torch.zeros_like(weight))
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    return float((weight * rows).sum() / weight.sum()), float((weight * cols).sum() / weight.sum())


def _same_place(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return abs(a[0] - b[0]) < 0.75 and abs(a[1] - b[1]) < 0.75


def test_without_non_spatial_ops_the_views_are_identical() -> None:
    cfg = SCAConfig(strong_prob=0.0, erasing=0.0, scale=[0.3, 1.0], hflip=0.5, rand_augment_prob=1.0)
    sca = SpatialConsistentAugmentation(cfg, 32, 3, MEAN, STD)
    torch.manual_seed(0)
    random.seed(0)
    image = torch.rand(3, 32, 32)
    for _ in range(10):
        teacher, student = sca(image)
        assert teacher.shape == student.shape == (3, 32, 32)
        assert torch.equal(teacher, student)
    assert not torch.equal(teacher, image)  # the geometry did act


def test_with_non_spatial_ops_the_geometry_still_matches() -> None:
    cfg = SCAConfig(strong_prob=1.0, erasing=0.0, scale=[0.6, 1.0], hflip=0.5, rand_augment=None,
                    blur_prob=0.5, solarize_prob=0.5, grey_prob=0.5)
    sca = SpatialConsistentAugmentation(cfg, 32, 3, MEAN, STD)
    torch.manual_seed(1)
    locations, changed = set(), 0
    for _ in range(20):
        teacher, student = sca(_planted())
        if teacher.abs().sum() == 0:
            continue  # the blob was cropped out
        assert _same_place(_blob_location(student), _blob_location(teacher))
        locations.add(tuple(round(v) for v in _blob_location(teacher)))
        changed += int(not torch.equal(teacher, student))
    assert len(locations) > 3 and changed > 10  # the crops moved the blob; the colour ops changed the student


def test_independent_crops_would_break_the_match() -> None:
    """The failure the design prevents (pitfall 8): two crops drawn separately put the blob in different places."""
    cfg = SCAConfig(strong_prob=0.0, erasing=0.0, scale=[0.3, 1.0], hflip=0.0, rand_augment=None)
    sca = SpatialConsistentAugmentation(cfg, 32, 3, MEAN, STD)
    torch.manual_seed(2)
    mismatches = sum(not _same_place(_blob_location(sca(_planted())[0]), _blob_location(sca(_planted())[0]))
                     for _ in range(10))
    assert mismatches >= 5


def test_erasing_touches_the_student_only() -> None:
    cfg = SCAConfig(strong_prob=0.0, erasing=1.0, rand_augment=None)
    sca = SpatialConsistentAugmentation(cfg, 32, 3, MEAN, STD)
    torch.manual_seed(3)
    teacher, student = sca(torch.full((3, 32, 32), 0.9))
    assert float((teacher - 0.9).abs().max()) <= 1 / 255
    different = (teacher != student).any(0)
    assert 0 < int(different.sum()) < 32 * 32


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(DataError, match="sun.sca.hflip"):
        SpatialConsistentAugmentation(SCAConfig(hflip=1.5), 32, 3, MEAN, STD)
    with pytest.raises(DataError, match="sun.sca.scale"):
        SpatialConsistentAugmentation(SCAConfig(scale=[0.0, 1.0]), 32, 3, MEAN, STD)


def test_single_channel_images_with_every_op_on() -> None:
    """The digits plan (§6): grey images, scale 0.35-1, no flip; every op forced on keeps shape and range."""
    cfg = SCAConfig(scale=[0.35, 1.0], hflip=0.0, strong_prob=1.0, rand_augment_prob=1.0, blur_prob=1.0,
                    solarize_prob=1.0, grey_prob=1.0, erasing=1.0)
    sca = SpatialConsistentAugmentation(cfg, 32, 1, (0.3,), (0.32,))
    torch.manual_seed(4)
    random.seed(4)
    teacher, student = sca(torch.rand(1, 32, 32))
    assert teacher.shape == student.shape == (1, 32, 32)
    assert 0 <= float(student.min()) and float(student.max()) <= 1 and not torch.equal(teacher, student)
