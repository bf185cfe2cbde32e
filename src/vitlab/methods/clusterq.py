"""ClusterQ (Gao et al., 2022, arXiv 2205.00179, "ClusterQ: Semantic feature distribution alignment for data-free
quantization"; v2 "Towards feature distribution alignment and diversity enhancement for data-free quantization").

GDFQ plus (vitlab spec clusterq §2.2, §2.3):

* **centroids**: one (mean, var) pair of deep-layer BN-input statistics per (class, aligned layer), aligned layers
  being BN index >= floor((n_BN + 1) / 2) - 2 in forward order; initialised at the start of ``soft_stat_epoch`` from
  generated class-c samples that the teacher classifies as c, then updated once per epoch by an EMA (new =
  0.8·old + 0.2·current);
* **alignment** (epochs > ``soft_stat_epoch``): generator loss += 0.9·L_CBNS, each class's sub-batch statistics against
  its centroid;
* **diversity**: 0.1 × the same distance to a centroid jittered by U(±0.03) (means) / U(±0.05) (variances);
* **augmentation** of generated images (p = 0.5 per batch: RandomResizedCrop 0.8-1 + flip), KD with 'batchmean'.

The released code's behaviour is available behind flags: ``centroid_source: running_buffers`` (every centroid is the
teacher's running statistics), ``diversity: constant`` (no gradient), ``cbns_reduction: released``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.config import RunConfig
from vitlab.methods.base import DataInfo, Progress, register_method
from vitlab.methods.gdfq import GDFQ
from vitlab.quant.losses import (
    BNStatsRecorder,
    ClassCentroids,
    aligned_layer_start,
    class_bns_loss,
    class_bns_loss_released,
)

__all__ = ["ClusterQ", "augment_batch"]


# ---- ClusterQ's augmentation of generated images ---------------------------------------------------------------------
def augment_batch(images: Tensor, prob: float, hflip: bool = True, scale: tuple[float, float] = (0.8, 1.0),
                  ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """With probability ``prob`` for the whole batch, every image (B, C, H, W) gets its own RandomResizedCrop (area
    ``scale``, aspect ``ratio``, output the same size) and a random horizontal flip; differentiable (grid_sample)."""
    if prob <= 0 or float(torch.rand(())) >= prob:
        return images
    b = images.shape[0]
    area = torch.empty(b).uniform_(*scale)
    log_ratio = torch.empty(b).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])))
    width = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    height = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    centre_x = (torch.rand(b) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(b) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0) if hflip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@register_method("clusterq")
class ClusterQ(GDFQ):
    """GDFQ + class-centroid alignment of deep BN statistics, EMA centroid updates and intra-class diversity."""

    default_kd_reduction = "batchmean"
    default_augment_prob = 0.5

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        m = self.mcfg
        self.augment_prob = self.default_augment_prob if m.augment_prob is None else m.augment_prob
        # BN layers in forward order, from one dry pass of the teacher
        probe = torch.zeros(2, data.channels, data.img_size, data.img_size)
        with BNStatsRecorder(self.teacher) as recorder, torch.no_grad():
            self.teacher(probe)
        self.bn_order = list(recorder.order)
        channels = [s.mean.numel() for s in recorder.stats]
        start = self.mcfg.align_start if self.mcfg.align_start is not None else aligned_layer_start(len(channels))
        if not 0 <= start < len(channels):
            from vitlab.config import ConfigError

            raise ConfigError(f"method.align_start: got {start}, expected 0 .. {len(channels) - 1} "
                              f"(the teacher has {len(channels)} BN layers)")
        self.align_start = start
        self.centroids = ClassCentroids(data.num_classes, channels[start:])

    def generate(self, labels: Tensor) -> Tensor:
        """GDFQ's generator images with ClusterQ's augmentation (:func:`augment_batch`, probability
        ``augment_prob``)."""
        return augment_batch(super().generate(labels), self.augment_prob, self.mcfg.augment_hflip)

    def generator_extra_loss(self, recorder: BNStatsRecorder, labels: Tensor, logits: Tensor,
                             progress: Progress) -> dict[str, Tensor]:
        m = self.mcfg
        if progress.epoch <= m.soft_stat_epoch:
            return {}
        aligned = recorder.stats[self.align_start:]
        if m.cbns_reduction == "released":
            cbns = class_bns_loss_released(aligned, labels, self.centroids, m.diversity_weight, m.mean_jitter,
                                           m.var_jitter)
        else:
            cbns = class_bns_loss(aligned, labels, self.centroids, m.diversity_weight, m.mean_jitter, m.var_jitter,
                                  m.diversity)
        return {"cbns": m.cbns_weight * cbns}

    def on_optimizer_step(self, progress: Progress) -> None:
        """At each epoch boundary from ``soft_stat_epoch`` on: initialise, then EMA-update the class centroids."""
        next_epoch = (progress.step + 1) // max(progress.steps_per_epoch, 1)
        at_boundary = (progress.step + 1) % max(progress.steps_per_epoch, 1) == 0
        if at_boundary and next_epoch >= self.mcfg.soft_stat_epoch:
            self.update_centroids()

    @torch.no_grad()
    def update_centroids(self) -> None:
        """One generated (and augmented) mixed batch with ``centroid_samples`` per class; the statistics of each class's
        samples that the teacher classifies correctly update that class's centroid (first time: set; then EMA with
        ``centroid_decay``).
        With ``centroid_source: running_buffers`` every centroid is the teacher's running statistics (as released)."""
        m = self.mcfg
        device = self.input_mean.device
        if m.centroid_source == "running_buffers":
            with BNStatsRecorder(self.teacher) as recorder:
                self.teacher(torch.zeros(1, self.data.channels, self.data.img_size, self.data.img_size, device=device))
            aligned = recorder.stats[self.align_start:]
            for c in range(self.data.num_classes):
                self.centroids.update(c, [s.running_mean for s in aligned], [s.running_var for s in aligned], 1.0)
            return
        # One mixed-class batch: the generator's BN layers run in training mode, so a single-class batch would be
        # normalised by its own statistics and differ from the mixed batches the generator is trained on.
        labels = torch.arange(self.data.num_classes, device=device).repeat(m.centroid_samples)
        with BNStatsRecorder(self.teacher) as recorder:
            logits = self.teacher(self.to_pixels(self.generate(labels)))
        correct = logits.argmax(1) == labels
        aligned = recorder.stats[self.align_start:]
        for c in range(self.data.num_classes):
            mask = correct & (labels == c)
            if not bool(mask.any()):
                continue
            stats = [s.subset(mask) for s in aligned]
            self.centroids.update(c, [mean for mean, _ in stats], [var for _, var in stats], m.centroid_decay)
