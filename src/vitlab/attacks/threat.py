"""Threat models (L∞ and L2 balls inside [0, 1]) and the model-mode handling every attack shares.

Attacks take images in [0, 1] (normalisation lives inside the model wrapper), never change the caller's model mode
for good (:func:`model_mode` restores every submodule's flag), and draw their randomness from an explicit generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from vitlab.errors import DataError
from vitlab.options import (  # noqa: F401  (defined without torch, for the recipes' schemas)
    ATTACK_MODES,
    NORMS,
    AttackMode,
    check_norm,
    parse_eps,
)

_RANGE_TOL = 1e-6  # float slack on [0, 1] and on the ε-ball (0.0313726 vs 0.0313725 has been observed)


def lp_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of a perturbation. delta: (B, ...) -> (B,)."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "Linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project onto B_norm(x, eps) then into [0, 1]. For L2 the clamp to [0, 1] can only shrink the perturbation."""
    if norm == "Linf":
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    delta = x_adv - x
    norms = lp_norm(delta, "L2").clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    delta = delta * torch.clamp(eps / norms, max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def check_unit_range(x: Tensor, name: str = "inputs") -> None:
    """Raise ValueError unless every value of ``x`` is in [0, 1] (attacks never see normalised images)."""
    if x.numel() and (x.min() < -_RANGE_TOL or x.max() > 1 + _RANGE_TOL):
        raise DataError(f"{name}: values in [{float(x.min()):.4g}, {float(x.max()):.4g}], expected images in [0, 1] "
                        "(normalisation belongs inside the model, e.g. vitlab.models.ImageClassifier)")


def max_perturbation(x_adv: Tensor, x: Tensor, norm: str) -> float:
    """The largest per-sample ``norm`` of x_adv − x (0 for an empty batch)."""
    return float(lp_norm(x_adv - x, norm).max()) if x.shape[0] else 0.0


def check_perturbation(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> None:
    """Raise RuntimeError if an attack left the ε-ball or [0, 1] (an attack bug, not a user error)."""
    worst = max_perturbation(x_adv, x, norm)
    if worst > eps + _RANGE_TOL * max(1.0, eps) or (x_adv.numel() and (x_adv.min() < 0 or x_adv.max() > 1)):
        raise RuntimeError(f"attack output outside the threat model: max {norm} perturbation {worst:.6f} > eps "
                           f"{eps:.6f} or values in [{float(x_adv.min()):.4g}, {float(x_adv.max()):.4g}]")


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def model_mode(model: nn.Module, mode: str = "eval") -> Iterator[nn.Module]:
    """Run ``model`` in ``mode`` inside the block and restore every submodule's train flag (and BN tracking) after.

    Modes: ``"eval"``; ``"train_frozen_bn"`` — train mode, but BatchNorm normalises with batch statistics without
    updating its running buffers (SCORE's ``track_bn_stats(model, False)``); ``"train"`` — plain train mode, BN
    buffers updated by every attack pass (SCORE's ``without_DDPM`` PGD-AT attack).
    """
    if mode not in ATTACK_MODES:
        raise ValueError(f"attack mode: unknown mode {mode!r} (allowed: {', '.join(ATTACK_MODES)})")
    flags = [(m, m.training) for m in model.modules()]
    norms = _batch_norms(model)
    tracking = [(bn, bn.track_running_stats) for bn in norms]
    try:
        model.train(mode != "eval")
        if mode == "train_frozen_bn":
            # With track_running_stats False, a BN layer in train mode passes no buffers to F.batch_norm:
            # batch statistics are used and the running mean/var and num_batches_tracked stay untouched.
            for bn in norms:
                bn.track_running_stats = False
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
        for bn, track in tracking:
            bn.track_running_stats = track


def make_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with ``seed``, or None (the global generator) when seed is None.

    Random starts are drawn on the CPU and then moved, so a seed gives the same points on every device (as in the
    reference AutoAttack code, whose ``torch.rand`` draws come from the CPU generator).
    """
    if seed is None:
        return None
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen
