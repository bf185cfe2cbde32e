"""The ``method`` section of HAT (:mod:`vitlab.methods.hat`): its schema, without torch, so that a recipe's mistake is
reported before the method loads (docs/engine.md, "Methods and their schemas")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vitlab.config import ConfigError, MethodConfig, require
from vitlab.methods.schemas.adversarial import parse_eps


@dataclass
class HATConfig(MethodConfig):
    """HAT's flags (official names in brackets); defaults are the README's "default settings in our paper"."""

    name: str = "hat"
    adv_iters: int = 3  # K, forward/backward passes per batch [--adv-iters]
    adv_eps: str = "2/255"  # ε, L∞ bound of δ, in eps_space units [--adv-eps]
    adv_lr: str = "1/255"  # α, sign-gradient step of δ [--adv-lr]
    adv_ce_weight: float = 3.0  # w_ce, weight of the adversarial CE of passes k >= 1 [--adv-ce-weight]
    adv_kl_weight: float = 0.01  # w_kl, weight of the symmetric KL in every pass [--adv-kl-weight]
    adv_epochs: int | None = None  # from this epoch on K = 1 (200 of 300 epochs in the paper); null: HAT throughout
    # normalized: δ on the normalised input (official) | pixel: δ on the [0, 1] image
    eps_space: Literal["normalized", "pixel"] = "normalized"
    clamp_to_image: bool = False  # clamp x + δ to [0, 1] (the official code does not)
    # none (official) | highpass: keep only δ's frequencies outside delta_filter_radius
    delta_filter: Literal["none", "highpass"] = "none"
    delta_filter_radius: float = 4.0  # radius (frequency bins) of the high-pass extension
    label_smoothing: float = 0.1  # soft targets of the CE (timm's smoothing; mixup targets when data.aug.mixup > 0)
    teacher_ckpt: str | None = None  # a vitlab checkpoint to distil from: the KD variant (train_kd.py)
    distill_type: Literal["none", "soft", "hard"] = "soft"  # [--distillation-type]
    distill_alpha: float = 0.5  # [--distillation-alpha]
    distill_tau: float = 1.0  # [--distillation-tau]
    eval_pgd_eps: list[str] = field(default_factory=list)  # pixel L∞ budgets of a PGD-10 check at evaluation

    def validate(self) -> None:
        require(self.adv_iters >= 1, "method.adv_iters", "an integer >= 1", self.adv_iters)
        for key in ("adv_eps", "adv_lr"):
            try:
                parse_eps(getattr(self, key))
            except ValueError as exc:
                raise ConfigError(f"method.{key}: {exc}") from None
        for value in self.eval_pgd_eps:
            try:
                parse_eps(value)
            except ValueError as exc:
                raise ConfigError(f"method.eval_pgd_eps: {exc}") from None
        require(self.adv_ce_weight >= 0, "method.adv_ce_weight", "a weight >= 0", self.adv_ce_weight)
        require(self.adv_kl_weight >= 0, "method.adv_kl_weight", "a weight >= 0", self.adv_kl_weight)
        require(self.adv_epochs is None or self.adv_epochs >= 0, "method.adv_epochs", "null or an epoch >= 0",
                self.adv_epochs)
        require(self.delta_filter_radius >= 0, "method.delta_filter_radius", "a radius >= 0", self.delta_filter_radius)
        require(0.0 <= self.label_smoothing < 1.0, "method.label_smoothing", "a value in [0, 1)", self.label_smoothing)
        require(0.0 <= self.distill_alpha <= 1.0, "method.distill_alpha", "a value in [0, 1]", self.distill_alpha)
        require(self.distill_tau > 0, "method.distill_tau", "a temperature > 0", self.distill_tau)
