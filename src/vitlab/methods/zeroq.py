"""ZeroQ (Cai et al., CVPR 2020, "ZeroQ: A novel zero shot quantization framework"), the baseline without a
generator or fine-tuning (vitlab spec clusterq §2.5).

A batch of ``distill_images`` Gaussian images (normalised input space) is optimised directly with Adam (lr 0.5,
ReduceLROnPlateau: patience 100, min lr 1e-4) for ``distill_steps`` steps so that its per-sample BN-input statistics
match the teacher's running statistics (and the input matches mean 0 / std 1). After the last step the student's
activation ranges are set from the distilled batch (running global min/max) and frozen. No fine-tuning.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from vitlab.config import ConfigError, RunConfig
from vitlab.methods.base import DataInfo, OptimizerBuilder, Progress, StepHelper, register_method
from vitlab.methods.data_free import DataFreeQuantConfig, DataFreeQuantMethod
from vitlab.quant.losses import BNStatsRecorder, zeroq_bn_loss
from vitlab.quant.quantizer import set_act_calibration

__all__ = ["ZeroQ"]


@register_method("zeroq")
class ZeroQ(DataFreeQuantMethod):
    """Distilled data by BN-statistics matching, then range calibration of the fake-quantised student."""

    act_range_mode = "minmax"

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        m = self.mcfg
        self.distilled = nn.Parameter(torch.randn(m.distill_images, data.channels, data.img_size, data.img_size))
        self._plateau_best = float("inf")
        self._plateau_bad = 0

    @staticmethod
    def steps_per_epoch(mcfg: DataFreeQuantConfig) -> int:
        return mcfg.distill_steps

    def configure_optimizers(self, build_optimizer: OptimizerBuilder) -> dict[str, torch.optim.Optimizer]:
        """Adam over the distilled images (ZeroQ's own optimizer, not the ``optim`` section's)."""
        return {"distilled": torch.optim.Adam([self.distilled], lr=self.mcfg.distill_lr)}

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        if total_steps != self.mcfg.distill_steps:
            raise ConfigError(f"train.epochs: ZeroQ runs one pass of method.distill_steps = {self.mcfg.distill_steps} "
                              f"steps, got {total_steps} steps (set train.epochs=1)")
        return {}

    def _plateau(self, loss: float, lr: float) -> float:
        """ReduceLROnPlateau (mode min, factor 0.1, patience, min lr) on the distillation loss; returns the next lr.

        Kept here rather than as an engine schedule because it depends on the loss itself."""
        m = self.mcfg
        if loss < self._plateau_best * (1 - 1e-4):
            self._plateau_best, self._plateau_bad = loss, 0
        else:
            self._plateau_bad += 1
            if self._plateau_bad > m.distill_patience:
                lr, self._plateau_bad = max(lr * 0.1, m.distill_min_lr), 0
        return lr

    def training_step(self, batch: dict[str, Tensor], progress: Progress, helper: StepHelper) -> dict[str, Tensor]:
        with BNStatsRecorder(self.teacher) as recorder:
            self.teacher(self.to_pixels(self.distilled))
        loss = zeroq_bn_loss(recorder.stats, self.distilled)
        helper.backward(loss)
        optimizer = helper.optimizers["distilled"]
        helper.step(optimizer)
        helper.set_lr(optimizer, self._plateau(float(loss.detach()), float(optimizer.param_groups[0]["lr"])))
        if progress.step + 1 == progress.total_steps:
            self.calibrate()
        return {"loss": loss.detach(), "lr_distill": torch.tensor(optimizer.param_groups[0]["lr"])}

    @torch.no_grad()
    def calibrate(self) -> None:
        """Activation ranges of the student from the distilled batch (global min/max), then frozen."""
        set_act_calibration(self.student, True)
        self.student(self.to_pixels(self.distilled))
        set_act_calibration(self.student, False)
