"""Projected gradient descent (Madry et al., 2018) in L∞ and L2, with a random start and any loss.

``pgd`` maximises a per-sample loss Σ_i ℓ(f(x̃_i), y_i) over the threat model with fixed steps: x̃ ← Π(x̃ + α·sign ∇)
for L∞ and x̃ ← Π(x̃ + α·∇/‖∇‖₂) for L2. Training (PGD-AT, TRADES, SCORE) and quick checks use it; the AutoAttack
protocol uses :mod:`vitlab.attacks.apgd`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.attacks.threat import check_norm, check_unit_range, lp_norm, make_generator, model_mode, project

AttackLoss = Callable[[Tensor, Tensor], Tensor]
#: named losses for ``pgd(loss=...)``; each maps logits (B, K) and labels (B,) to a per-sample loss (B,)
LOSSES = ("ce", "cw", "dlr", "se")


def cw_margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Carlini-Wagner margin max_{k≠y} z_k − z_y. (B, K), (B,) -> (B,)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true


def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Difference of logits ratio (Croce & Hein, 2020, eq. 5): −(z_y − max_{k≠y} z_k) / (z_π1 − z_π3 + 1e-12)."""
    ranked, _ = logits.sort(dim=1)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    top_is_true = (logits.argmax(dim=1) == labels).to(logits.dtype)
    best_other = ranked[:, -2] * top_is_true + ranked[:, -1] * (1.0 - top_is_true)
    return -(true - best_other) / (ranked[:, -1] - ranked[:, -3] + 1e-12)


def se_onehot_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """SE(p(x̃), onehot(y)), the attack objective of PGD-AT(SE) in SCORE's ``without_DDPM`` code. -> (B,)."""
    return ((logits.softmax(dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)) ** 2).sum(dim=1)


def resolve_loss(loss: str | AttackLoss) -> AttackLoss:
    """A per-sample loss function from its name (``ce``, ``cw``, ``dlr``, ``se``) or the callable itself."""
    if callable(loss):
        return loss
    table: dict[str, AttackLoss] = {
        "ce": lambda z, y: F.cross_entropy(z, y, reduction="none"),
        "cw": cw_margin_loss,
        "dlr": dlr_loss,
        "se": se_onehot_loss,
    }
    if loss not in table:
        raise ValueError(f"attack loss: unknown loss {loss!r} (allowed: {', '.join(LOSSES)} or a callable)")
    return table[loss]


def random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    """A uniform point of the L∞ ball, or a point of the L2 ball with a uniform radius, clipped to [0, 1]."""
    if norm == "Linf":
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        return (x + eps * noise).clamp(0.0, 1.0)
    direction = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    radius = torch.rand(x.shape[0], generator=generator, dtype=x.dtype).to(x.device)
    scale = eps * radius / lp_norm(direction, "L2").clamp_min(1e-12)
    return (x + direction * scale.view(-1, *([1] * (x.dim() - 1)))).clamp(0.0, 1.0)


def pgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "Linf", steps: int = 10,
        step_size: float | None = None, loss: str | AttackLoss = "ce", random_init: bool = True,
        seed: int | None = None, generator: torch.Generator | None = None, mode: str = "eval",
        check_inputs: bool = True) -> Tensor:
    """PGD: ``steps`` ascent steps on Σ_i loss(model(x̃_i), y_i) inside B_norm(x, eps) ∩ [0, 1].

    Args:
        x: (B, C, H, W) images in [0, 1]; y: (B,) labels (or whatever ``loss`` takes as its second argument).
        step_size: α; default 2.5·eps/steps (Madry et al.).
        loss: a name in :data:`LOSSES` or a callable ``(logits, y) -> (B,)``.
        random_init: start from a random point of the ball (else from x).
        seed / generator: the random start's randomness; ``seed`` makes a private generator, both None use the
            global generator (what training wants: the engine checkpoints it).
        mode: how the model runs during the attack (``eval``, ``train_frozen_bn``, ``train``); restored after.
    Returns x̃ (B, C, H, W), detached.
    """
    norm = check_norm(norm)
    if steps < 0:
        raise ValueError(f"pgd: steps {steps} must be >= 0")
    if check_inputs:
        check_unit_range(x, "pgd inputs")
    alpha = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    loss_fn = resolve_loss(loss)
    if generator is None and seed is not None:
        generator = make_generator(seed)
    x = x.detach()
    x_adv = random_start(x, eps, norm, generator) if random_init and eps > 0 else x.clone()
    with model_mode(model, mode), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            objective = loss_fn(model(x_adv), y).sum()
            (grad,) = torch.autograd.grad(objective, [x_adv])
            with torch.no_grad():
                if norm == "Linf":
                    x_adv = x_adv + alpha * grad.sign()
                else:
                    grad_norm = lp_norm(grad, "L2").clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
                    x_adv = x_adv + alpha * grad / grad_norm
                x_adv = project(x_adv, x, eps, norm)
    return x_adv.detach()


def trades_perturb(model: nn.Module, x: Tensor, p_clean: Tensor, distance: Callable[[Tensor, Tensor], Tensor], *,
                   eps: float, norm: str = "Linf", steps: int = 10, step_size: float | None = None,
                   start: str = "uniform", mode: str = "train_frozen_bn",
                   generator: torch.Generator | None = None) -> Tensor:
    """The inner maximisation of TRADES / SCORE: x̃ = argmax_{x̃ ∈ B(x, ε) ∩ [0,1]} Σ_i D(p(x̃_i), p_clean_i).

    SCORE's official code (§2.2 of the vitlab spec): the objective is the training distance itself (SE for SCORE,
    KL(p_clean ‖ p(x̃)) for TRADES); ``p_clean`` is detached.
      * L∞: start ``uniform`` (x + U(−ε, ε), DDPM code) or ``normal`` (x + 0.001·N(0, 1), ``without_DDPM`` TRADES),
        then x̃ ← Π(x̃ + α·sign ∇), α = ``step_size`` (default ε/4).
      * L2 (DDPM ``l2-pgd``): δ₀ = 0.001·N(0, 1); δ ← δ + (2ε/steps)·∇/‖∇‖ (a random direction where ‖∇‖ = 0);
        then x + δ is clamped to [0, 1] and δ renormalised to ‖δ‖ ≤ ε.
    x: (B, C, H, W) in [0, 1]; p_clean: (B, K); distance: (p_adv, p_clean) -> (B,). Returns x̃, detached.
    """
    norm = check_norm(norm)
    if start not in ("uniform", "normal"):
        raise ValueError(f"trades_perturb: start {start!r} must be 'uniform' or 'normal'")
    x = x.detach()
    p_clean = p_clean.detach()
    view = (-1, *([1] * (x.dim() - 1)))
    if norm == "L2" or start == "normal":
        x_adv = (x + 0.001 * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)).clamp(0.0, 1.0)
    else:
        x_adv = random_start(x, eps, "Linf", generator)
    alpha = step_size if step_size is not None else (eps / 4 if norm == "Linf" else 2 * eps / max(steps, 1))
    with model_mode(model, mode), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            objective = distance(model(x_adv).softmax(dim=1), p_clean).sum()
            (grad,) = torch.autograd.grad(objective, [x_adv])
            with torch.no_grad():
                if norm == "Linf":
                    x_adv = project(x_adv + alpha * grad.sign(), x, eps, "Linf")
                    continue
                grad_norm = lp_norm(grad, "L2")
                zero = grad_norm == 0
                if zero.any():
                    grad[zero] = torch.randn(grad[zero].shape, generator=generator, dtype=grad.dtype).to(grad.device)
                    grad_norm = lp_norm(grad, "L2")
                x_adv = (x_adv + alpha * grad / grad_norm.view(view)).clamp(0.0, 1.0)
                delta = x_adv - x
                delta = delta * torch.clamp(eps / lp_norm(delta, "L2").clamp_min(1e-12), max=1.0).view(view)
                x_adv = x + delta
    return x_adv.detach()
