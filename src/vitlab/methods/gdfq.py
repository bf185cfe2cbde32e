"""GDFQ (Xu et al., ECCV 2020, "Generative low-bitwidth data free quantization"), the base of ClusterQ (vitlab spec
clusterq §2.1).

A class-conditional generator learns images on which the frozen full-precision teacher predicts the asked class
(cross-entropy) and reproduces its BatchNorm statistics (L_BNS); the fake-quantised student is distilled from the
teacher on those images (KD with T = 20 plus cross-entropy). One generator step and one student step per iteration
(manual optimisation, two optimizers); the student is stepped only after ``warmup_epochs`` and stays in eval mode
throughout, so its BN layers keep the teacher's running statistics. Activation ranges move only in the first
``calib_epochs`` epochs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.config import RunConfig
from vitlab.engine.schedules import step_schedule
from vitlab.methods.base import DataInfo, OptimizerBuilder, Progress, StepHelper, register_method
from vitlab.methods.data_free import DataFreeQuantMethod
from vitlab.quant.generator import build_generator
from vitlab.quant.losses import BNStatsRecorder, bns_loss, kd_loss
from vitlab.quant.quantizer import set_act_calibration

__all__ = ["GDFQ"]


@register_method("gdfq")
class GDFQ(DataFreeQuantMethod):
    """GDFQ: conditional generator with CE + BNS loss, KD fine-tuning of the fake-quantised student."""

    default_kd_reduction = "mean"

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        m = self.mcfg
        self.generator = build_generator(m.generator, data.num_classes, data.img_size, data.channels, m.latent_dim,
                                         m.generator_bn_eps)
        self.kd_reduction = m.kd_reduction or self.default_kd_reduction

    def configure_optimizers(self, build_optimizer: OptimizerBuilder) -> dict[str, torch.optim.Optimizer]:
        """The student's optimizer from the ``optim`` section; the generator's Adam from ``method.generator_*``."""
        m = self.mcfg
        generator = torch.optim.Adam(self.generator.parameters(), lr=m.generator_lr,
                                     betas=(m.generator_betas[0], m.generator_betas[1]))
        return {"student": build_optimizer(self.student.parameters()), "generator": generator}

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        o, m = self.cfg.optim, self.mcfg
        epochs = max(total_steps // max(steps_per_epoch, 1), 1)
        epoch_of_step = np.arange(total_steps) // max(steps_per_epoch, 1)
        return {"generator_lr": step_schedule(m.generator_lr, epochs, steps_per_epoch, o.step_milestones,
                                              o.step_gamma)[:total_steps],
                "act_calibrate": (epoch_of_step < m.calib_epochs).astype(float),
                "student_update": (epoch_of_step >= m.warmup_epochs).astype(float)}

    def generate(self, labels: Tensor) -> Tensor:
        """Generator images (B, C, H, W) in normalised input space for ``labels`` (B,)."""
        z = torch.randn(labels.shape[0], self.mcfg.latent_dim, device=labels.device)
        return self.generator(z, labels)

    def generator_extra_loss(self, recorder: BNStatsRecorder, labels: Tensor, logits: Tensor,
                             progress: Progress) -> dict[str, Tensor]:
        """Terms added to the generator loss by subclasses (ClusterQ's alignment); GDFQ adds none."""
        return {}

    def training_step(self, batch: dict[str, Tensor], progress: Progress, helper: StepHelper) -> dict[str, Tensor]:
        m = self.mcfg
        opts = helper.optimizers
        labels = batch["label"]
        helper.set_lr(opts["generator"], progress["generator_lr"])
        helper.set_lr(opts["student"], progress["lr"], progress["weight_decay"])
        # 1. generator step: CE(teacher(G(z, y)), y) + 0.1·L_BNS (+ ClusterQ's terms)
        with BNStatsRecorder(self.teacher) as recorder:
            images = self.generate(labels)
            teacher_logits = self.teacher(self.to_pixels(images))
        ce = F.cross_entropy(teacher_logits, labels)
        bns = bns_loss(recorder.stats)
        extra = self.generator_extra_loss(recorder, labels, teacher_logits, progress)
        loss_g = ce + m.bns_weight * bns + sum(extra.values(), torch.zeros((), device=labels.device))
        helper.backward(loss_g)
        helper.step(opts["generator"])
        # 2. student step on the detached images: KD(T=20) + CE; ranges calibrate in the first epochs
        set_act_calibration(self.student, progress["act_calibrate"] > 0.5)
        pixels = self.to_pixels(images.detach())
        update = progress["student_update"] > 0.5
        with torch.set_grad_enabled(update):
            student_logits = self.student(pixels)
            loss_s = kd_loss(student_logits, teacher_logits.detach(), labels, m.kd_temperature, m.kd_alpha,
                             self.kd_reduction)
        if update:
            helper.backward(loss_s)
            helper.step(opts["student"])
        set_act_calibration(self.student, False)
        out = {"loss": loss_s.detach(), "loss_g": loss_g.detach(), "ce_g": ce.detach(), "bns": bns.detach(),
               "teacher_acc": (teacher_logits.argmax(1) == labels).float().mean(),
               "student_acc": (student_logits.argmax(1) == labels).float().mean()}
        out.update({k: v.detach() for k, v in extra.items()})
        return out
