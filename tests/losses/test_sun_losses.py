"""SUN's patch labels, background filtration and losses against naive loops and specs/sun.md §5."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.losses.sun import (
    background_count,
    background_mask,
    patch_loss,
    patch_targets,
    sun_loss,
)


def _naive_targets(logits: torch.Tensor, k: int, bg: int, smoothing: float = 0.1, bg_index: int | None = None
                   ) -> torch.Tensor:
    """Per image, per patch, written from the spec: sort by hand, ties by index."""
    batch, patches, classes = logits.shape
    bg_index = classes if bg_index is None else bg_index
    off, on = smoothing / classes, 1 - smoothing + smoothing / classes
    out = torch.zeros(batch, patches, classes + 1)
    for b in range(batch):
        maxes = [float(logits[b, j].max()) for j in range(patches)]
        ranked = sorted(range(patches), key=lambda j: (maxes[j], j))
        background = set(ranked[:bg])
        for j in range(patches):
            row = [off] * (classes + 1)
            if j in background:
                row[bg_index] = on
            else:
                scores = [float(v) for v in logits[b, j]]
                for c in sorted(range(classes), key=lambda c: (-scores[c], c))[:k]:
                    row[c] = on
            out[b, j] = torch.tensor(row)
    return out


def test_spec_values_for_64_classes_and_25_patches() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 25, 64)
    targets = patch_targets(logits, top_k=5, bg_count=background_count(25, 0.4))
    assert targets.shape == (3, 25, 65)
    background = background_mask(logits, 10)
    assert background.sum(dim=1).tolist() == [10, 10, 10]
    fg = targets[~background]
    assert torch.allclose(fg.sum(dim=-1), torch.full((fg.shape[0],), 4.6015625), atol=1e-6)
    assert ((fg - 0.9015625).abs() < 1e-7).sum(dim=-1).tolist() == [5] * fg.shape[0]
    assert ((fg - 0.0015625).abs() < 1e-7).sum(dim=-1).tolist() == [60] * fg.shape[0]
    bg = targets[background]
    assert torch.allclose(bg[:, 64], torch.full((30,), 0.9015625))
    assert torch.allclose(bg[:, :64], torch.full((30, 64), 0.0015625))
    assert torch.allclose(bg.sum(dim=-1), torch.full((30,), 1.0015625), atol=1e-6)
    assert torch.equal(targets, _naive_targets(logits, 5, 10))


def test_background_is_the_lowest_max_logit_patches_planted() -> None:
    logits = torch.zeros(1, 25, 64)
    logits[0, :, 3] = 5.0
    planted = [2, 7, 11, 13, 17, 19, 20, 21, 23, 24]
    logits[0, planted, 3] = -1.0 - torch.arange(10.0)
    assert sorted(torch.nonzero(background_mask(logits, 10)[0]).flatten().tolist()) == planted


def test_ties_rank_the_lowest_index_first() -> None:
    logits = torch.zeros(1, 16, 5)  # every patch and every class tied
    assert torch.nonzero(background_mask(logits, 6)[0]).flatten().tolist() == [0, 1, 2, 3, 4, 5]
    targets = patch_targets(logits, top_k=2, bg_count=6)
    on = 1 - 0.1 + 0.1 / 5
    assert torch.nonzero(targets[0, 10] == on).flatten().tolist() == [0, 1]  # foreground: classes 0 and 1
    assert torch.nonzero(targets[0, 0] == on).flatten().tolist() == [5]  # background: the extra class
    assert torch.equal(targets, _naive_targets(logits, 2, 6))


def test_official_background_index_puts_on_at_class_1() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 16, 5)
    targets = patch_targets(logits, top_k=2, bg_count=6, official_background_index=True)
    background = background_mask(logits, 6)
    assert torch.allclose(targets[background][:, 1], torch.full((12,), 0.92))
    assert torch.allclose(targets[background][:, 5], torch.full((12,), 0.02))
    assert torch.equal(targets, _naive_targets(logits, 2, 6, bg_index=1))


def test_teacher_prob_topk_target() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 16, 5)
    targets = patch_targets(logits, top_k=2, bg_count=6, target="teacher_prob_topk")
    background = background_mask(logits, 6)
    assert torch.allclose(targets.sum(dim=-1), torch.ones(2, 16))
    assert torch.all(targets[~background][:, 5] == 0)
    assert torch.all(targets[background][:, 5] == 1)
    b, j = torch.nonzero(~background)[0].tolist()
    top = logits[b, j].topk(2).indices
    assert torch.allclose(targets[b, j, top], logits[b, j, top].softmax(0))


def test_bad_settings_are_errors() -> None:
    logits = torch.randn(1, 16, 5)
    with pytest.raises(ValueError, match="top_k"):
        patch_targets(logits, top_k=5, bg_count=6)
    with pytest.raises(ValueError, match="bg_ratio"):
        background_count(16, 1.0)
    assert background_count(16, 0.4) == 6 and background_count(25, 0.4) == 10


def test_patch_loss_against_a_loop_and_zero_logits() -> None:
    torch.manual_seed(3)
    logits = torch.randn(2, 25, 64)
    targets = patch_targets(logits, 5, 10)
    student = torch.randn(2, 25, 65)
    slow = 0.0
    for b in range(2):
        for j in range(25):
            log_p = [float(v) for v in F.log_softmax(student[b, j], dim=0)]
            slow += -sum(float(targets[b, j, c]) * log_p[c] for c in range(65))
    assert math.isclose(float(patch_loss(student, targets)), slow / 50, rel_tol=1e-5)
    assert math.isclose(float(patch_loss(student, targets, "sum")), slow / 2, rel_tol=1e-5)
    zero = patch_loss(torch.zeros(2, 25, 65), targets)
    assert math.isclose(float(zero), float(targets.sum(-1).mean()) * math.log(65), rel_tol=1e-6)


def test_total_loss_is_ce_plus_half_patch_loss() -> None:
    torch.manual_seed(4)
    global_logits, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    teacher, student = torch.randn(4, 16, 5), torch.randn(4, 16, 6, requires_grad=True)
    targets = patch_targets(teacher, 2, 6)
    out = sun_loss(global_logits, labels, student, targets)
    expected = F.cross_entropy(global_logits, labels) + 0.5 * patch_loss(student, targets)
    assert torch.allclose(out["loss"], expected)
    out["loss"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
