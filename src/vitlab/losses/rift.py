"""RIFT's losses (specs/rift.md §2.1–§2.3): ASCC convex-hull weights and their entropy, the TRADES-style KL, and the
class-conditional InfoNCE between the fine-tuned model's features and a frozen pre-trained copy's."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: logit of an unused substitution slot (§2.3): its weight is e^-500 relative to a used one, i.e. 0
MASKED_SLOT_LOGIT = -500.0
#: the official constant that normalises the ASCC entropy term (max length 300 x batch 128)
ENTROPY_NORMALISER = 300 * 128


def hull_logits(raw: Tensor, slot_mask: Tensor) -> Tensor:
    """Masked slot logits (§2.3): ``raw`` where a slot is used, -500 where not. raw (B, L, S), mask (B, L, S)."""
    m = slot_mask.to(raw.dtype)
    return raw * m + (-MASKED_SLOT_LOGIT) * (m - 1)


def hull_weights(raw: Tensor, slot_mask: Tensor) -> Tensor:
    """Convex-combination weights w = softmax over the slots of the masked logits; (B, L, S), sum 1 per position."""
    return F.softmax(hull_logits(raw, slot_mask), dim=-1)


def hull_embeddings(weights: Tensor, slot_embeddings: Tensor) -> Tensor:
    """Σ_slots w · emb: weights (B, L, S), slot embeddings (B, L, S, D) -> (B, L, D)."""
    return torch.einsum("bls,blsd->bld", weights, slot_embeddings)


def hull_entropy(raw: Tensor, slot_mask: Tensor) -> Tensor:
    """Σ over positions and examples of the entropy of w, / (300 · 128) (the official normalisation); a scalar."""
    logits = hull_logits(raw, slot_mask)
    return -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum() / ENTROPY_NORMALISER


def kl_clean_adv(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """Batch mean of KL(p_clean ‖ p_adv) (§2.1): ``KLDivLoss(sum)(log p_adv, p_clean) / B``; gradients flow through
    both logits (TRADES-style). logits (B, C) -> scalar."""
    log_adv = F.log_softmax(adv_logits, dim=1)
    log_clean = F.log_softmax(clean_logits, dim=1)
    return (log_clean.exp() * (log_clean - log_adv)).sum() / clean_logits.shape[0]


def info_nce(student: Tensor, teacher: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE of one class's sub-batch (§2.2): student (b, d) and teacher (b, d) features, L2-normalised here;
    logits = Z_s Z_tᵀ / τ, log-softmax over the **student axis** (dim 0), loss = −mean(diagonal). I ≥ log b − loss."""
    zs = F.normalize(student, dim=1)
    zt = F.normalize(teacher, dim=1)
    logits = zs @ zt.T / temperature
    return -torch.diagonal(F.log_softmax(logits, dim=0)).mean()


def class_conditional_info_nce(student: list[Tensor], teacher: list[Tensor], temperature: float = 0.2) -> Tensor:
    """L_MI|Y (§2.2): :func:`info_nce` per class (the projected features of each class's sub-batch, each through
    that class's own heads), averaged over the classes with at least one example."""
    losses = [info_nce(s, t, temperature) for s, t in zip(student, teacher) if s.shape[0] > 0]
    if not losses:
        raise ValueError("class-conditional InfoNCE: no class has an example in this batch")
    return torch.stack(losses).mean()


def info_nce_bound(loss: Tensor | float, batch: int) -> float:
    """The InfoNCE lower bound on the mutual information, log b − loss."""
    return math.log(batch) - float(loss)
