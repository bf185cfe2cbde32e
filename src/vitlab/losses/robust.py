"""Losses of adversarial training: TRADES, SCORE and PGD-AT, on probability vectors.

SCORE (Pang et al., 2022, "Robustness and Accuracy Could Be Reconcilable by (Proper) Definition") is TRADES
(Zhang et al., 2019) with the KL divergence replaced by the squared Euclidean distance (SE) between softmax outputs,
in the natural and in the robust term. Every function takes logits or probabilities of shape (B, K) and returns a
per-sample loss (B,) unless it says otherwise, so that the caller decides the reduction and the clipping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.errors import ConfigError
from vitlab.options import (  # noqa: F401  (defined without torch, for the recipes' schemas)
    DISTANCES,
    check_distance_name,
)

_EPS_LOG = 1e-12  # guards log(0) for one-hot targets; KL(onehot ‖ p) then equals CE exactly


def smoothed_targets(labels: Tensor, num_classes: int, smoothing: float,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """ỹ = (1 − K·s/(K−1))·onehot + s/(K−1): mass ``1 − s`` on the label, ``s/(K−1)`` on every other class.

    labels: (B,) int64 -> (B, K). This is SCORE's ``--ls`` convention (the smoothing mass excludes the true class),
    not timm's ``label_smoothing`` (which spreads ``s/K`` over all classes).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"smoothed_targets: smoothing {smoothing} must be in [0, 1)")
    if num_classes < 2:
        raise ConfigError(f"smoothed_targets: num_classes {num_classes} must be >= 2")
    off = smoothing / (num_classes - 1)
    onehot = F.one_hot(labels, num_classes).to(dtype)
    return (1.0 - num_classes * off) * onehot + off


def squared_euclidean(p: Tensor, q: Tensor) -> Tensor:
    """SE(p, q) = Σ_k (p_k − q_k)². p, q: (B, K) -> (B,). At most 2 between two distributions."""
    return ((p - q) ** 2).sum(dim=-1)


def kl_divergence(target: Tensor, p: Tensor) -> Tensor:
    """KL(target ‖ p) = Σ_k target_k (log target_k − log p_k), with 0·log 0 = 0. (B, K), (B, K) -> (B,)."""
    return torch.xlogy(target, target).sum(-1) - (target * torch.log(p.clamp_min(_EPS_LOG))).sum(-1)


def probability_distance(p: Tensor, q: Tensor, name: str) -> Tensor:
    """The distance ``name`` between two probability vectors (SCORE ``without_DDPM`` ``distance_func``).

    p: (B, K) the model's output (the first argument of the official ``distance_func``), q: (B, K) the reference
    (a target distribution or the clean output). "kl" is KL(q ‖ p), so ``kl`` to a one-hot target is the CE loss and
    ``kl(p_adv, p_clean)`` is the TRADES term KL(p(x) ‖ p(x̃)). "p=<r>" is the Lr norm ‖p − q‖_r. Returns (B,).
    """
    if name == "se":
        return squared_euclidean(p, q)
    if name == "kl":
        return kl_divergence(q, p)
    if name == "kl_sqrt":
        return kl_divergence(q, p).clamp_min(0).sqrt()
    if name == "rkl_sqrt":
        return kl_divergence(p, q).clamp_min(0).sqrt()
    if name in ("js", "js_sqrt"):
        mid = (p + q) / 2
        js = 0.5 * (kl_divergence(p, mid) + kl_divergence(q, mid))
        return js.clamp_min(0).sqrt() if name == "js_sqrt" else js
    if name == "l1_square":
        return (p - q).abs().sum(-1).square()
    if name.startswith("p="):
        return torch.linalg.vector_norm(p - q, ord=float(name[2:]), dim=-1)
    raise ConfigError(f"probability_distance: unknown distance {name!r} (allowed: {', '.join(DISTANCES)} or p=<r>)")


def clip_bound(clip: float, num_classes: int, distance: str = "se") -> float:
    """The loss-clipping bound of SCORE's ``without_DDPM`` code: distance((1−c, c/(K−1), …), onehot).

    For SE it is c²·K/(K−1): 0.1 for c = 0.3 and 0.17778 for c = 0.4 with K = 10.
    """
    if clip <= 0:
        return 0.0
    smoothed = torch.full((1, num_classes), clip / (num_classes - 1), dtype=torch.float64)
    smoothed[0, 0] = 1.0 - clip
    onehot = torch.zeros(1, num_classes, dtype=torch.float64)
    onehot[0, 0] = 1.0
    return float(probability_distance(smoothed, onehot, distance)[0])


def trades_loss(logits_clean: Tensor, logits_adv: Tensor, labels: Tensor, beta: float, *, distance: str = "kl",
                label_smoothing: float = 0.0, clip_value: float = 0.0, clip_loss: float = 0.0,
                clip_clean: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    """TRADES with any distance; SCORE is ``distance="se"`` (Pang et al., 2022, §2.1 of the vitlab spec).

    L = mean_i D(p(x_i), ỹ_i) + β · mean_i D(p(x̃_i), p(x_i)), with p(x) **not detached** in the robust term.
    For ``distance="kl"`` the natural term is the (label-smoothed) cross-entropy and the robust term
    KL(p(x) ‖ p(x̃)), as in TRADES.

    Clipping, two conventions of the official code:
      * ``clip_value`` c (DDPM code, ``--clip_value``): the robust term becomes max(D − c, 0);
      * ``clip_loss`` c (``without_DDPM`` code, ``--clip_loss``): bound b = :func:`clip_bound`, and relu(L_i − b)
        on the per-sample **total** L_i = natural + β·robust, or on the robust term only when ``clip_clean`` is False
        (``--not_clip_clean``).

    logits_clean, logits_adv: (B, K); labels: (B,). Returns the scalar loss and the (detached) terms.
    """
    num_classes = logits_clean.shape[-1]
    p_clean = logits_clean.softmax(dim=-1)
    p_adv = logits_adv.softmax(dim=-1)
    target = smoothed_targets(labels, num_classes, label_smoothing, p_clean.dtype)
    if distance == "kl":
        # log-softmax keeps the natural CE exact for confident predictions (softmax can underflow to 0)
        natural = -(target * F.log_softmax(logits_clean, dim=-1)).sum(-1) + torch.xlogy(target, target).sum(-1)
        robust = (p_clean * (F.log_softmax(logits_clean, dim=-1) - F.log_softmax(logits_adv, dim=-1))).sum(-1)
    else:
        natural = probability_distance(p_clean, target, distance)
        robust = probability_distance(p_adv, p_clean, distance)
    if clip_value > 0:
        robust = F.relu(robust - clip_value)
    bound = clip_bound(clip_loss, num_classes, distance)
    if bound > 0 and not clip_clean:
        robust = F.relu(robust - bound)
    total = natural + beta * robust
    if bound > 0 and clip_clean:
        total = F.relu(total - bound)
    return total.mean(), {"natural": natural.mean().detach(), "robust": robust.mean().detach()}


def pgd_at_loss(logits_adv: Tensor, labels: Tensor, *, distance: str = "kl", label_smoothing: float = 0.0,
                clip_loss: float = 0.0) -> Tensor:
    """PGD-AT (Madry et al., 2018) on the adversarial logits: mean_i relu(D(p(x̃_i), ỹ_i) − b).

    ``distance="kl"`` is the cross-entropy (PGD-AT); ``"se"`` is PGD-AT(SE) of SCORE's ``without_DDPM`` code.
    logits_adv: (B, K), labels: (B,) -> scalar.
    """
    num_classes = logits_adv.shape[-1]
    target = smoothed_targets(labels, num_classes, label_smoothing, logits_adv.dtype)
    if distance == "kl":
        per_sample = -(target * F.log_softmax(logits_adv, dim=-1)).sum(-1) + torch.xlogy(target, target).sum(-1)
    else:
        per_sample = probability_distance(logits_adv.softmax(dim=-1), target, distance)
    bound = clip_bound(clip_loss, num_classes, distance)
    if bound > 0:
        per_sample = F.relu(per_sample - bound)
    return per_sample.mean()
