"""Supervised classification: cross-entropy with label smoothing, mixup/cutmix, optional distillation.

Distillation is DeiT's (Touvron et al., 2021, "Training data-efficient image transformers"), from
:mod:`vitlab.losses.distillation`: ``soft`` is the summed KL(teacher/τ ‖ student/τ)·τ² divided by the number of
logits, ``hard`` is cross-entropy to the teacher's argmax, mixed with the label loss as
``(1 - alpha)·CE + alpha·distill``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import Tensor, nn

from vitlab.config import RunConfig
from vitlab.errors import CheckpointError, DataError
from vitlab.losses.distillation import deit_total_loss
from vitlab.methods.base import DataInfo, Method, Progress, register_method
from vitlab.methods.schemas.supervised import SupervisedConfig
from vitlab.models.classifier import build_classifier

soft_target_cross_entropy = SoftTargetCrossEntropy()  # timm's loss of mixup/cutmix targets: (B, K), (B, K) -> scalar


@register_method("supervised")
class Supervised(Method[SupervisedConfig]):

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        mcfg = self.mcfg
        if cfg.model.num_classes is not None and cfg.model.num_classes < data.num_classes:
            raise DataError(f"model.num_classes: got {cfg.model.num_classes}, but data.name {cfg.data.name} has "
                            f"{data.num_classes} classes (leave model.num_classes null to take them from the data)")
        self.model = build_classifier(cfg.model, data.num_classes, data.channels, data.img_size, data.mean, data.std)
        from vitlab.data import build_mixup

        self.mixup = build_mixup(cfg.data.aug, data.num_classes, mcfg.label_smoothing)
        self.teacher: nn.Module | None = None
        if mcfg.teacher_ckpt:
            from vitlab.engine.checkpoint import load_frozen_teacher

            self.teacher = load_frozen_teacher(mcfg.teacher_ckpt)
            classes = getattr(self.teacher, "num_classes", None)
            if classes is not None and classes != data.num_classes:
                raise CheckpointError(f"method.teacher_ckpt {mcfg.teacher_ckpt}: the teacher has {classes} classes, "
                                      f"but data.name {cfg.data.name} has {data.num_classes}")

    def train(self, mode: bool = True) -> Supervised:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher is frozen: BN statistics and dropout stay in eval mode
        return self

    def eval_model(self) -> nn.Module:
        return self.model

    def forward(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        x = batch["image"] if "image" in batch else batch["video"]
        y = batch["label"]
        if self.mixup is not None and self.training:
            x, target = self.mixup(x, y)
            logits = self.model(x)
            ce = soft_target_cross_entropy(logits, target)
        else:
            logits = self.model(x)
            ce = F.cross_entropy(logits, y, label_smoothing=self.mcfg.label_smoothing)
        out = {"ce": ce.detach()}
        loss = ce
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            loss, kd = deit_total_loss(ce, logits, teacher_logits, self.mcfg.distill_type, self.mcfg.distill_alpha,
                                       self.mcfg.distill_tau)
            out["distill"] = kd.detach()
        with torch.no_grad():
            out["acc"] = (logits.argmax(-1) == y).float().mean() if self.mixup is None else torch.zeros(())
        out["loss"] = loss
        return out
