"""TransZero++ losses (specs/transzero.md §2.4, §5) against naive loops and the spec's initial values."""

from __future__ import annotations

import math

import pytest
import torch

from vitlab.losses.transzero import (
    TransZeroLossWeights,
    attribute_cross_entropy,
    attribute_regression_loss,
    self_calibration_loss,
    transzero_loss,
)
from vitlab.methods.transzero import initial_losses
from vitlab.models.transzero import TransZeroPP


def _naive_ace(scores, labels, beta):
    total = 0.0
    for b in range(scores.shape[0]):
        row = [float(scores[b, c] - beta[c]) for c in range(scores.shape[1])]
        total += -(row[int(labels[b])] - math.log(sum(math.exp(v) for v in row)))
    return total / scores.shape[0]


def _naive_sc(scores, unseen):
    masses = []
    for b in range(scores.shape[0]):
        exps = [math.exp(float(v)) for v in scores[b]]
        masses.append(sum(exps[int(u)] for u in unseen) / sum(exps))
    return -math.log(sum(masses) / len(masses))  # the log of the batch mean


def _naive_ar(embedding, labels, z):
    total = 0.0
    for b in range(embedding.shape[0]):
        for a in range(embedding.shape[1]):
            total += (float(embedding[b, a]) - float(z[int(labels[b]), a])) ** 2
    return total / embedding.numel()


def test_losses_match_naive_loops() -> None:
    torch.manual_seed(0)
    scores, labels = torch.randn(6, 7) * 3, torch.tensor([0, 2, 4, 6, 2, 0])
    beta = torch.tensor([-1.0, 1, -1, 1, -1, 1, -1])
    unseen = torch.tensor([1, 3, 5])
    embedding, z = torch.randn(6, 4), torch.nn.functional.normalize(torch.rand(7, 4), dim=1)
    assert attribute_cross_entropy(scores, labels, beta).item() == pytest.approx(_naive_ace(scores, labels, beta),
                                                                                  rel=1e-5)
    assert self_calibration_loss(scores, unseen).item() == pytest.approx(_naive_sc(scores, unseen), rel=1e-5)
    # not the mean of per-image logs (pitfall 7)
    per_image = -torch.log(scores.softmax(-1)[:, unseen].sum(1)).mean().item()
    assert self_calibration_loss(scores, unseen).item() != pytest.approx(per_image, rel=1e-3)
    assert attribute_regression_loss(embedding, labels, z).item() == pytest.approx(_naive_ar(embedding, labels, z),
                                                                                    rel=1e-5)


def test_total_loss_composition() -> None:
    torch.manual_seed(1)
    out = {"scores_avt": torch.randn(4, 5), "scores_vat": torch.randn(4, 5), "embedding_avt": torch.randn(4, 3),
           "embedding_vat": torch.randn(4, 3)}
    labels, beta, unseen = torch.tensor([0, 2, 4, 2]), torch.tensor([-1.0, 1, -1, 1, -1]), torch.tensor([1, 3])
    z = torch.nn.functional.normalize(torch.rand(5, 3), dim=1)
    w = TransZeroLossWeights(0.2, 1e-4, 0.1, 1e-3, 1e-2)
    result = transzero_loss(out, labels, z, beta, unseen, w, ("avt", "vat"))

    def branch(k):
        return (_naive_ace(out[f"scores_{k}"], labels, beta) + 0.2 * _naive_sc(out[f"scores_{k}"], unseen)
                + 1e-4 * _naive_ar(out[f"embedding_{k}"], labels, z))

    feature = float(((out["embedding_avt"] - out["embedding_vat"]) ** 2).mean())
    prediction = float(((out["scores_avt"] - out["scores_vat"]) ** 2).mean())
    expected = branch("avt") + 0.1 * branch("vat") + 1e-3 * feature + 1e-2 * prediction
    assert result["loss"].item() == pytest.approx(expected, rel=1e-5)
    single = transzero_loss(out, labels, z, beta, unseen, w, ("avt",))
    assert single["loss"].item() == pytest.approx(branch("avt"), rel=1e-5)
    assert "feature_collab" not in single


@pytest.mark.parametrize("name,a,c,u,values", [("CUB", 312, 200, 50, (5.2983, 0.3408, 0.003205)),
                                               ("AWA2", 85, 50, 10, (3.9120, 0.4327, 0.011765))])
def test_vat_initial_losses(name: str, a: int, c: int, u: int, values: tuple[float, float, float]) -> None:
    """W₁′ = 0 (CUB / AWA2 init): ψ_VAT = 0, S_VAT = β, so L_ACE = ln C, L_SC and L_AR = 1/A exactly (§5)."""
    torch.manual_seed(0)
    model = TransZeroPP(torch.rand(c, a), torch.randn(a, 300), list(range(c - u, c)), (14, 14), 2048, 32, 32, 0.0,
                        True, vat_init="zeros", branches=("vat",))
    labels = torch.randint(0, c - u, (3,))
    out = model(torch.randn(3, 2048, 14, 14))
    terms = transzero_loss(out, labels, model.class_vectors, model.calibration, model.unseen, TransZeroLossWeights(),
                           ("vat",))
    got = (terms["ace_vat"].item(), terms["sc_vat"].item(), terms["ar_vat"].item())
    assert got == pytest.approx(values, abs=1e-4, rel=1e-3)
    assert tuple(initial_losses(c, u, a).values()) == pytest.approx(values, abs=1e-4, rel=1e-3)


def test_loss_falls_in_a_few_steps() -> None:
    torch.manual_seed(0)
    model = TransZeroPP(torch.rand(5, 6), torch.randn(6, 10), [3, 4], (3, 3), 8, 16, 16, 0.0, True)
    x, labels = torch.randn(12, 8, 3, 3), torch.randint(0, 3, (12,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        out = model(x)
        loss = transzero_loss(out, labels, model.class_vectors, model.calibration, model.unseen,
                              TransZeroLossWeights(), ("avt", "vat"))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
