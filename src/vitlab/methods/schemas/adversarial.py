"""The ``method`` sections of PGD-AT and TRADES (:mod:`vitlab.methods.adversarial`), which SCORE's extends: their
schemas, without torch, so that a recipe's mistake is reported before the methods load (docs/engine.md, "Methods and
their schemas").

The threat-model names these schemas check (the norms, ``attack_mode``, attack budgets, the distances) come from
:mod:`vitlab.options`, which :mod:`vitlab.attacks.threat` and :mod:`vitlab.losses.robust` share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vitlab.config import ConfigError, MethodConfig, require
from vitlab.options import (  # noqa: F401  (re-exported: the schema's vocabulary)
    ATTACK_MODES,
    DISTANCES,
    NORMS,
    AttackMode,
    check_distance_name,
    check_norm,
    parse_eps,
)


@dataclass
class AdversarialConfig(MethodConfig):
    """Hyper-parameters shared by ``pgd_at``, ``trades`` and ``score`` (SCORE's flags in brackets)."""

    name: str = "trades"
    eps: str = "8/255"  # attack budget, a number or a fraction [--epsilon]
    step_size: str = "2/255"  # PGD step α [--pgd-alpha]
    steps: int = 10  # inner-maximisation steps [--attack-iters]
    norm: str = "Linf"  # Linf | L2, any case
    attack_mode: AttackMode = "train_frozen_bn"  # eval | train_frozen_bn | train: how BN runs during the attack
    # uniform: x + U(-eps, eps) (DDPM code) | normal: x + 0.001 N(0, 1) (without_DDPM)
    attack_start: Literal["uniform", "normal"] = "uniform"
    beta: float = 6.0  # weight of the robust term (TRADES lambda) [--beta / --TRADESlambda]
    # kl (TRADES; PGD-AT with CE) | se (SCORE) | js | js_sqrt | l1_square | kl_sqrt | rkl_sqrt | p=<r>
    distance: str = "kl"
    label_smoothing: float = 0.0  # SCORE's convention: 1 - ls on the label, ls/(K-1) elsewhere [--ls]
    clip_value: float = 0.0  # DDPM code: robust term relu(D - clip_value) [--clip_value]
    clip_loss: float = 0.0  # without_DDPM code: relu(loss - c^2 K/(K-1)) [--clip_loss]
    clip_clean: bool = True  # clip_loss applies to the total loss (False: robust term only) [not --not_clip_clean]
    extra_data: str | None = None  # .npz with "image" (N,H,W,C uint8 or N,C,H,W float in [0,1]) and "label"
    extra_fraction: float = 0.0  # fraction of every batch drawn from extra_data (0.7 in SCORE) [--unsup-fraction]
    # constant: ema.decay | score (needs ema.enabled): 0 for the updates k < 2.5% of all steps, then
    # min(ema.decay, (1+d)/(10+d)) with d = k - 2.5% of all steps (see score_ema_decay)
    ema_schedule: Literal["constant", "score"] = "constant"
    eval_pgd_steps: int = 20  # PGD steps of the robust accuracy measured at each evaluation (0: off)

    def validate(self) -> None:
        for key in ("eps", "step_size"):
            try:
                parse_eps(getattr(self, key))
            except ValueError as exc:
                raise ConfigError(f"method.{key}: {exc}") from None
        try:
            check_norm(self.norm)
            check_distance_name(self.distance)
        except ValueError as exc:
            raise ConfigError(f"method.{'distance' if 'distance' in str(exc) else 'norm'}: {exc}") from None
        require(self.steps >= 1, "method.steps", "an integer >= 1", self.steps)
        require(self.beta >= 0, "method.beta", "a weight >= 0", self.beta)
        require(0.0 <= self.label_smoothing < 1.0, "method.label_smoothing", "a value in [0, 1)", self.label_smoothing)
        require(self.clip_value >= 0, "method.clip_value", "a value >= 0", self.clip_value)
        require(0.0 <= self.clip_loss < 1.0, "method.clip_loss", "a value in [0, 1)", self.clip_loss)
        require(0.0 <= self.extra_fraction < 1.0, "method.extra_fraction", "a fraction in [0, 1)", self.extra_fraction)
        if self.extra_fraction > 0 and not self.extra_data:  # a dependency between keys
            raise ConfigError("method.extra_fraction: > 0 needs method.extra_data (an .npz with image and label)")
        require(self.eval_pgd_steps >= 0, "method.eval_pgd_steps", "an integer >= 0", self.eval_pgd_steps)


@dataclass
class PGDATConfig(AdversarialConfig):
    name: str = "pgd_at"
    attack_mode: AttackMode = "eval"


@dataclass
class TRADESConfig(AdversarialConfig):
    name: str = "trades"
