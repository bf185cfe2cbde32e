"""DeiT distillation (Touvron et al., 2021, "Training data-efficient image transformers & distillation through
attention", §5; the official ``losses.DistillationLoss``), shared by supervised training and HAT's KD variant
(vitlab spec ``hat.md`` §2.4).

- soft: Σ_b Σ_k KL(softmax(teacher_b/τ) ‖ softmax(student_b/τ))·τ² / (B·K). DeiT divides the summed KL by the
  number of logits (``numel``), not by the batch size: the term is the per-logit mean, 1/K of ``batchmean``.
- hard: cross-entropy of the student to the teacher's argmax (mean over the batch).
- total: (1 − α)·base + α·distill, ``base`` being the label loss of the class head.

The student's logits here are those of the head that distils (DeiT's distillation token when the model has one).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vitlab.errors import ConfigError

#: the distillation kinds :func:`deit_distillation_loss` computes
DISTILL_TYPES = ("soft", "hard")


def deit_distillation_loss(student: Tensor, teacher: Tensor, kind: str, tau: float) -> Tensor:
    """DeiT's distillation term. student, teacher: (B, K) logits (the teacher's without gradient) -> scalar.

    ``tau`` is used by ``soft`` only. Raises ValueError for a kind outside :data:`DISTILL_TYPES`. Computed in float32
    (also under autocast).
    """
    student, teacher = student.float(), teacher.float()
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    if kind == "soft":
        return F.kl_div(F.log_softmax(student / tau, dim=-1), F.log_softmax(teacher / tau, dim=-1),
                        reduction="sum", log_target=True) * (tau * tau) / student.numel()
    raise ConfigError(f"deit_distillation_loss: kind {kind!r} is not one of {', '.join(DISTILL_TYPES)}")


def deit_total_loss(base: Tensor, student: Tensor, teacher: Tensor, kind: str, alpha: float,
                    tau: float) -> tuple[Tensor, Tensor]:
    """(1 − α)·base + α·distill, and distill. base: scalar label loss; student, teacher: (B, K) logits."""
    distill = deit_distillation_loss(student, teacher, kind, tau)
    return (1 - alpha) * base + alpha * distill, distill
