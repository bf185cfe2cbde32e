"""TransZero++ losses (specs/transzero.md §2.4): attribute-based cross-entropy, self-calibration, attribute
regression per sub-net, and the semantic collaborative losses between the two sub-nets.

Scores S (B, C) include the calibration β (+1 unseen, −1 seen); L_ACE removes it, L_SC keeps it (pitfall 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def attribute_cross_entropy(scores: Tensor, labels: Tensor, calibration: Tensor) -> Tensor:
    """L_ACE: softmax cross-entropy of S − β over all C classes (seen and unseen in the denominator, the official
    ``is_conservative=True``). scores (B, C), labels (B,) class ids, calibration β (C,) -> scalar."""
    return F.cross_entropy(scores - calibration, labels)


def self_calibration_loss(scores: Tensor, unseen: Tensor) -> Tensor:
    """L_SC = −log(mean over the batch of the softmax mass on the unseen classes), on S with β (DAZLE's form: the log
    of the batch mean, pitfall 7). scores (B, C), unseen (U,) class ids -> scalar."""
    mass = scores.softmax(dim=-1)[:, unseen].sum(dim=1)
    return -torch.log(mass.mean())


def attribute_regression_loss(embedding: Tensor, labels: Tensor, class_vectors: Tensor) -> Tensor:
    """L_AR = MSE(ψ, z_y) averaged over B × A. embedding ψ (B, A), labels (B,), class_vectors z (C, A) L2-normalised."""
    return F.mse_loss(embedding, class_vectors[labels])


@dataclass
class TransZeroLossWeights:
    """λ's of §3 (code names in brackets); defaults: the CUB GZSL column."""

    self_calibration: float = 0.2  # λ_SC (lambda_)
    regression: float = 1e-4  # λ_AR (lambda_reg)
    vat: float = 0.1  # λ_VAT (lambda_v2s)
    feature_collab: float = 1e-3  # λ_f (lambda_cst_reg_att)
    prediction_collab: float = 1e-2  # λ_p (lambda_cst_reg_cls)


def branch_loss(scores: Tensor, embedding: Tensor, labels: Tensor, class_vectors: Tensor, calibration: Tensor,
                unseen: Tensor, weights: TransZeroLossWeights) -> dict[str, Tensor]:
    """One sub-net's L_k = L_ACE + λ_SC L_SC + λ_AR L_AR, and its three terms."""
    ace = attribute_cross_entropy(scores, labels, calibration)
    sc = self_calibration_loss(scores, unseen)
    ar = attribute_regression_loss(embedding, labels, class_vectors)
    return {"loss": ace + weights.self_calibration * sc + weights.regression * ar, "ace": ace, "sc": sc, "ar": ar}


def transzero_loss(out: Mapping[str, Tensor], labels: Tensor, class_vectors: Tensor, calibration: Tensor,
                   unseen: Tensor, weights: TransZeroLossWeights, branches: tuple[str, ...]) -> dict[str, Tensor]:
    """The total loss of §2.4 for the sub-nets in ``branches`` (``out`` holds "scores_k" and "embedding_k").

    Both sub-nets: L = L_AVT + λ_VAT L_VAT + λ_f MSE(ψ_AVT, ψ_VAT) + λ_p MSE(S_AVT, S_VAT), no stop-gradient (each
    sub-net teaches the other). One branch (TransZero = AVT alone, VAT alone, the global baseline): its L_k.
    Returns "loss" and the terms per branch ("ace_avt", ...) and "feature_collab" / "prediction_collab".
    """
    result: dict[str, Tensor] = {}
    total: Tensor | None = None
    for k in branches:
        terms = branch_loss(out[f"scores_{k}"], out[f"embedding_{k}"], labels, class_vectors, calibration, unseen,
                            weights)
        result.update({f"{name}_{k}": v for name, v in terms.items() if name != "loss"})
        scale = weights.vat if (k == "vat" and len(branches) == 2) else 1.0
        total = terms["loss"] * scale if total is None else total + scale * terms["loss"]
    assert total is not None
    if "avt" in branches and "vat" in branches:
        feature = F.mse_loss(out["embedding_avt"], out["embedding_vat"])
        prediction = F.mse_loss(out["scores_avt"], out["scores_vat"])
        result["feature_collab"], result["prediction_collab"] = feature, prediction
        total = total + weights.feature_collab * feature + weights.prediction_collab * prediction
    result["loss"] = total
    return result
