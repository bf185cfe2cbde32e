"""The ``method`` section of supervised training (:mod:`vitlab.methods.supervised`): its schema, without torch, so
that a recipe's mistake is reported before the method loads (docs/engine.md, "Methods and their schemas")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vitlab.config import MethodConfig, require


@dataclass
class SupervisedConfig(MethodConfig):
    name: str = "supervised"
    label_smoothing: float = 0.0
    teacher_ckpt: str | None = None  # a vitlab checkpoint to distil from (its eval model is the teacher)
    distill_type: Literal["soft", "hard"] = "soft"
    distill_alpha: float = 0.5  # weight of the distillation term
    distill_tau: float = 1.0  # temperature of soft distillation

    def validate(self) -> None:
        require(0.0 <= self.label_smoothing < 1.0, "method.label_smoothing", "a value in [0, 1)", self.label_smoothing)
        require(0.0 <= self.distill_alpha <= 1.0, "method.distill_alpha", "a value in [0, 1]", self.distill_alpha)
        require(self.distill_tau > 0, "method.distill_tau", "a temperature > 0", self.distill_tau)
