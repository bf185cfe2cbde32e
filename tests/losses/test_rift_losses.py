"""RIFT losses against naive loops and the spec's §5 test values (specs/rift.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.losses.rift import (
    class_conditional_info_nce,
    hull_embeddings,
    hull_entropy,
    hull_weights,
    info_nce,
    info_nce_bound,
    kl_clean_adv,
)


def naive_info_nce(zs, zt, tau):
    zs, zt = F.normalize(zs, dim=1), F.normalize(zt, dim=1)
    b = zs.shape[0]
    total = 0.0
    for i in range(b):  # column i: the teacher i against every student j (softmax over the student axis)
        num = math.exp(float(zs[i] @ zt[i]) / tau)
        den = sum(math.exp(float(zs[j] @ zt[i]) / tau) for j in range(b))
        total += -math.log(num / den)
    return total / b


@pytest.mark.parametrize("b, expected", [(16, 2.7726), (40, 3.6889)])
def test_info_nce_uninformative_is_log_b(b, expected):
    z = torch.ones(b, 8)
    assert float(info_nce(z, z, 0.2)) == pytest.approx(expected, abs=1e-4)
    assert info_nce_bound(info_nce(z, z, 0.2), b) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("b, expected", [(16, 0.09628), (32, 0.18969), (40, 0.23332)])
def test_info_nce_perfect_positives_orthogonal_negatives(b, expected):
    z = torch.eye(b)
    assert float(info_nce(z, z, 0.2)) == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(math.log(1 + (b - 1) * math.exp(-1 / 0.2)), abs=1e-5)


def test_info_nce_matches_naive_loop_and_softmax_axis_matters():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert float(info_nce(zs, zt, 0.2)) == pytest.approx(naive_info_nce(zs, zt, 0.2), rel=1e-5)
    # the teacher-axis softmax is the same loss with the roles swapped; it differs on asymmetric inputs
    assert abs(float(info_nce(zs, zt, 0.2)) - float(info_nce(zt, zs, 0.2))) > 1e-3


def test_class_conditional_info_nce_is_the_mean_over_classes():
    g = torch.Generator().manual_seed(1)
    s = [torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g), torch.zeros(0, 3)]
    t = [torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g), torch.zeros(0, 3)]
    expected = (naive_info_nce(s[0], t[0], 0.2) + naive_info_nce(s[1], t[1], 0.2)) / 2
    assert float(class_conditional_info_nce(s, t, 0.2)) == pytest.approx(expected, rel=1e-5)


def test_hull_weights_single_slot_masked_slots_and_sums():
    raw = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).expand(2, 3, 4)
    w = hull_weights(raw, mask)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3))
    assert torch.all(w[:, 0, 0] == 1.0)  # one valid slot (no synonyms): weight 1
    assert float(w[:, 1, 3].max()) < 1e-200 or float(w[:, 1, 3].max()) == 0.0  # masked: ~ e^-500
    emb = torch.randn(2, 3, 4, 7)
    adv = hull_embeddings(w, emb)
    naive = torch.zeros(2, 3, 7)
    for b in range(2):
        for pos in range(3):
            for s in range(4):
                naive[b, pos] += w[b, pos, s] * emb[b, pos, s]
    assert torch.allclose(adv, naive, atol=1e-6)
    assert torch.allclose(adv[:, 0], emb[:, 0, 0])  # the clean embedding where nothing may be substituted


def test_hull_entropy_naive_loop():
    raw, mask = torch.randn(2, 3, 4), torch.ones(2, 3, 4)
    mask[0, 0, 2:] = 0
    w = hull_weights(raw, mask)
    naive = 0.0
    for b in range(2):
        for pos in range(3):
            naive -= sum(float(w[b, pos, s]) * math.log(float(w[b, pos, s])) for s in range(4)
                         if float(w[b, pos, s]) > 0)
    assert float(hull_entropy(raw, mask)) == pytest.approx(naive / (300 * 128), rel=1e-5)


def test_kl_zero_when_equal_and_batch_mean_of_per_example_kl():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert float(kl_clean_adv(a, a)) == pytest.approx(0.0, abs=1e-7)
    naive = 0.0
    for i in range(5):
        p, q = F.softmax(a[i], 0), F.softmax(b[i], 0)
        naive += float((p * (p / q).log()).sum())
    assert float(kl_clean_adv(a, b)) == pytest.approx(naive / 5, rel=1e-5)
    reference = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(b, 1), F.softmax(a, 1)) / 5
    assert float(kl_clean_adv(a, b)) == pytest.approx(float(reference), rel=1e-5)
    a.requires_grad_(), b.requires_grad_()
    kl_clean_adv(a, b).backward()
    assert a.grad is not None and b.grad is not None and a.grad.abs().sum() > 0  # gradients through both logits
