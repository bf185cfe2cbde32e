"""DeiT distillation (losses/distillation.py) against a per-sample, per-class loop copy of DeiT's soft and hard
distillation, a pinned value, and the 1/K relation to a batch-mean KL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.losses.distillation import DISTILL_TYPES, deit_distillation_loss, deit_total_loss


def _softmax(row: list[float], tau: float) -> list[float]:
    top = max(row)
    exps = [math.exp((v - top) / tau) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def loop_soft(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> float:
    """DeiT soft: Σ_b Σ_k p_t·(log p_t − log p_s)·τ² / (B·K), one sample and one class at a time."""
    batch, classes = student.shape
    total = 0.0
    for b in range(batch):
        p_s = _softmax(student[b].tolist(), tau)
        p_t = _softmax(teacher[b].tolist(), tau)
        for k in range(classes):
            total += p_t[k] * (math.log(p_t[k]) - math.log(p_s[k]))
    return total * tau * tau / (batch * classes)


def loop_hard(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """DeiT hard: mean over samples of −log softmax(student)[argmax teacher]."""
    batch, classes = student.shape
    total = 0.0
    for b in range(batch):
        t = teacher[b].tolist()
        label = max(range(classes), key=lambda k: t[k])
        total -= math.log(_softmax(student[b].tolist(), 1.0)[label])
    return total / batch


@pytest.mark.parametrize("shape, tau, seed", [((4, 5), 3.0, 0), ((3, 7), 1.0, 1), ((6, 2), 0.5, 2)])
def test_soft_and_hard_match_the_loop(shape: tuple[int, int], tau: float, seed: int) -> None:
    torch.manual_seed(seed)
    student, teacher = torch.randn(shape) * 2, torch.randn(shape) * 2
    assert deit_distillation_loss(student, teacher, "soft", tau).item() == pytest.approx(
        loop_soft(student, teacher, tau), rel=1e-5)
    assert deit_distillation_loss(student, teacher, "hard", tau).item() == pytest.approx(
        loop_hard(student, teacher), rel=1e-5)


def test_pinned_values() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    soft = deit_distillation_loss(student, teacher, "soft", 3.0).item()
    hard = deit_distillation_loss(student, teacher, "hard", 3.0).item()
    assert soft == pytest.approx(0.1207480, abs=1e-6)  # float64 loop: 0.12074800; float32: 0.12074785
    assert hard == pytest.approx(2.0215547, abs=1e-6)
    # float32 against the float64 loop: the KL sums terms of both signs, so its relative error exceeds float32's eps
    assert soft == pytest.approx(loop_soft(student, teacher, 3.0), rel=1e-5)
    assert hard == pytest.approx(loop_hard(student, teacher), rel=1e-6)


def test_soft_is_batch_mean_kl_over_the_class_count_and_zero_on_equal_logits() -> None:
    torch.manual_seed(3)
    student, teacher, tau = torch.randn(8, 10), torch.randn(8, 10), 2.0
    batchmean = F.kl_div(F.log_softmax(student / tau, -1), F.log_softmax(teacher / tau, -1), reduction="batchmean",
                         log_target=True) * tau * tau
    assert deit_distillation_loss(student, teacher, "soft", tau).item() == pytest.approx(batchmean.item() / 10,
                                                                                        rel=1e-5)
    assert deit_distillation_loss(teacher, teacher, "soft", tau).abs().item() < 1e-7


def test_total_mixes_with_alpha_and_gradients_reach_only_the_student() -> None:
    torch.manual_seed(4)
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5)
    base = torch.tensor(1.25)
    for kind in DISTILL_TYPES:
        total, distill = deit_total_loss(base, student, teacher, kind, 0.3, 2.0)
        assert torch.equal(distill, deit_distillation_loss(student, teacher, kind, 2.0))
        assert total.item() == pytest.approx(0.7 * 1.25 + 0.3 * distill.item(), rel=1e-6)
    assert deit_total_loss(base, student, teacher, "soft", 0.0, 2.0)[0].item() == pytest.approx(1.25)
    total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="kind 'none'"):
        deit_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), "none", 1.0)
