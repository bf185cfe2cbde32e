"""TRADES / SCORE / PGD-AT losses against the spec's test values (score.md §5) and slow per-sample loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.losses.robust import (
    clip_bound,
    pgd_at_loss,
    probability_distance,
    smoothed_targets,
    squared_euclidean,
    trades_loss,
)


def test_spec_values_logits_2_0_0():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    p = logits.softmax(-1)
    assert torch.allclose(p, torch.tensor([[0.786986, 0.106507, 0.106507]]), atol=1e-6)
    onehot = torch.tensor([[1.0, 0.0, 0.0]])
    assert squared_euclidean(p, onehot).item() == pytest.approx(0.0680624, abs=1e-7)
    assert probability_distance(p, onehot, "kl").item() == pytest.approx(0.239545, abs=1e-6)  # = CE
    uniform = torch.full((1, 3), 1 / 3)
    assert squared_euclidean(p, uniform).item() == pytest.approx(0.308701, abs=1e-6)
    # the PGD-AT(SE) loss on these logits is the same SE value
    assert pgd_at_loss(logits, torch.tensor([0]), distance="se").item() == pytest.approx(0.0680624, abs=1e-7)
    assert pgd_at_loss(logits, torch.tensor([0]), distance="kl").item() == pytest.approx(0.239545, abs=1e-6)


def test_uniform_vs_onehot_and_upper_bound():
    k = 10
    uniform = torch.full((1, k), 1 / k)
    onehot = F.one_hot(torch.tensor([3]), k).float()
    assert squared_euclidean(uniform, onehot).item() == pytest.approx(1 - 1 / k)
    other = F.one_hot(torch.tensor([4]), k).float()
    assert squared_euclidean(onehot, other).item() == pytest.approx(2.0)
    p = torch.randn(64, k).softmax(-1)
    q = torch.randn(64, k).softmax(-1)
    assert (squared_euclidean(p, q) <= 2 + 1e-6).all()


def test_smoothed_targets_and_clip_bounds():
    t = smoothed_targets(torch.tensor([2]), 10, 0.1)
    assert t[0, 2].item() == pytest.approx(0.9)
    assert t[0, 0].item() == pytest.approx(0.011111, abs=1e-6)
    assert t.sum().item() == pytest.approx(1.0)
    assert clip_bound(0.3, 10) == pytest.approx(0.1, abs=1e-6)
    assert clip_bound(0.4, 10) == pytest.approx(0.17778, abs=1e-5)
    assert clip_bound(0.0, 10) == 0.0


def _naive_trades(logits_clean, logits_adv, labels, beta, distance, ls, clip_loss, clip_clean, clip_value):
    """One sample at a time, written from the spec (score.md §2.1)."""
    k = logits_clean.shape[1]
    bound = 0.0
    if clip_loss > 0:
        smoothed = [clip_loss / (k - 1)] * k
        smoothed[0] = 1 - clip_loss
        bound = sum((s - (1.0 if i == 0 else 0.0)) ** 2 for i, s in enumerate(smoothed)) if distance == "se" else None
    total = 0.0
    for i in range(len(labels)):
        pc = [math.exp(v) for v in logits_clean[i].tolist()]
        pc = [v / sum(pc) for v in pc]
        pa = [math.exp(v) for v in logits_adv[i].tolist()]
        pa = [v / sum(pa) for v in pa]
        target = [(1 - ls) if j == labels[i] else ls / (k - 1) for j in range(k)]
        if distance == "se":
            nat = sum((a - b) ** 2 for a, b in zip(pc, target))
            rob = sum((a - b) ** 2 for a, b in zip(pa, pc))
        else:
            nat = sum(t * (math.log(t) if t > 0 else 0.0) - t * math.log(p) for t, p in zip(target, pc))
            rob = sum(c * (math.log(c) - math.log(a)) for c, a in zip(pc, pa))
        rob = max(rob - clip_value, 0.0)
        if bound and not clip_clean:
            rob = max(rob - bound, 0.0)
        loss = nat + beta * rob
        if bound and clip_clean:
            loss = max(loss - bound, 0.0)
        total += loss
    return total / len(labels)


@pytest.mark.parametrize("distance,ls,clip_loss,clip_clean,clip_value", [
    ("se", 0.0, 0.0, True, 0.0), ("se", 0.0, 0.3, True, 0.0), ("se", 0.1, 0.3, False, 0.0),
    ("se", 0.0, 0.0, True, 0.05), ("kl", 0.0, 0.0, True, 0.0), ("kl", 0.1, 0.0, True, 0.0)])
def test_trades_loss_matches_naive_loop(distance, ls, clip_loss, clip_clean, clip_value):
    torch.manual_seed(0)
    logits_clean = torch.randn(6, 10, dtype=torch.float64) * 2
    logits_adv = logits_clean + 0.5 * torch.randn(6, 10, dtype=torch.float64)
    labels = torch.randint(0, 10, (6,))
    loss, terms = trades_loss(logits_clean, logits_adv, labels, 6.0, distance=distance, label_smoothing=ls,
                              clip_loss=clip_loss, clip_clean=clip_clean, clip_value=clip_value)
    expected = _naive_trades(logits_clean, logits_adv, labels, 6.0, distance, ls, clip_loss, clip_clean, clip_value)
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert set(terms) == {"natural", "robust"}


def test_robust_term_gradient_flows_into_clean_logits():
    logits_clean = torch.randn(4, 10, requires_grad=True)
    logits_adv = torch.randn(4, 10, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    _, _ = trades_loss(logits_clean, logits_adv, labels, 1.0, distance="se")
    # robust term alone: beta * SE(p(x_adv), p(x)); its gradient w.r.t. the clean logits must be non-zero
    robust = squared_euclidean(logits_adv.softmax(-1), logits_clean.softmax(-1)).mean()
    (g,) = torch.autograd.grad(robust, [logits_clean])
    assert g.abs().sum() > 0
    full_beta, _ = trades_loss(logits_clean, logits_adv, labels, 5.0, distance="se")
    zero_beta, _ = trades_loss(logits_clean, logits_adv, labels, 0.0, distance="se")
    (g_full,) = torch.autograd.grad(full_beta, [logits_clean])
    (g_zero,) = torch.autograd.grad(zero_beta, [logits_clean])
    assert not torch.allclose(g_full, g_zero)


@pytest.mark.parametrize("name", ["js", "js_sqrt", "l1_square", "kl_sqrt", "rkl_sqrt", "p=2", "p=1"])
def test_other_distances_are_zero_on_equal_and_positive_otherwise(name):
    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.2, 0.5, 0.3]])
    assert probability_distance(p, p, name).abs().item() < 1e-6
    assert probability_distance(p, q, name).item() > 0
    if name == "p=2":
        assert probability_distance(p, q, name).item() ** 2 == pytest.approx(squared_euclidean(p, q).item())


def test_unknown_distance_raises():
    with pytest.raises(ValueError, match="unknown distance"):
        probability_distance(torch.ones(1, 2) / 2, torch.ones(1, 2) / 2, "cosine")
