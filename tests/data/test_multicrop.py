"""Multi-crop augmentation of Mugs: shapes, weak/strong choice, and a DataError for bad ranges."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from vitlab.data import DataError
from vitlab.data.multicrop import MultiCropTransform


def _transform(strong_prob: float) -> MultiCropTransform:
    return MultiCropTransform(global_size=16, local_size=8, local_crops=3, global_scale=(0.4, 1.0),
                              local_scale=(0.1, 0.4), strong_prob=strong_prob, hflip=0.0, channels=1, mean=(0.5,),
                              std=(0.25,))


def test_crops_have_the_asked_shapes_and_the_weak_flag_follows_the_strong_probability() -> None:
    image = Image.fromarray((torch.rand(20, 20) * 255).to(torch.uint8).numpy(), mode="L")
    random.seed(0)
    torch.manual_seed(0)
    out = _transform(0.5)(image)
    assert out["teacher_globals"].shape == (2, 1, 16, 16) and out["student_globals"].shape == (2, 1, 16, 16)
    assert out["student_locals"].shape == (3, 1, 8, 8)
    assert all(0.0 <= float(v.min()) and float(v.max()) <= 1.0 for k, v in out.items() if k != "weak_flag")
    assert _transform(0.0)(image)["weak_flag"] is True and _transform(1.0)(image)["weak_flag"] is False
    # the student's crops are sampled afresh, not copies of the teacher's
    assert not torch.equal(out["teacher_globals"], out["student_globals"])


def test_bad_scale_range_names_the_key() -> None:
    with pytest.raises(DataError, match="method.crops.local_scale"):
        MultiCropTransform(16, 8, 2, (0.4, 1.0), (0.5, 0.1), 0.5, 0.0, 1, (0.5,), (0.25,))
