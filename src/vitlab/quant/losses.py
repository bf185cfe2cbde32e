"""Losses of data-free quantisation: BN-statistics matching (GDFQ, ZeroQ), ClusterQ's class-centroid alignment and
diversity terms, and GDFQ/ClusterQ's distillation loss (vitlab spec clusterq §2.1, §2.2, §2.5).

Statistics are of each BatchNorm2d layer's **input**. GDFQ and ClusterQ use batch statistics per channel over
(N, H, W) with the biased variance; ZeroQ uses per-sample statistics per channel over (H, W) with
σ = sqrt(var + 1e-6). The two are kept apart (spec §7.8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.errors import ConfigError

__all__ = ["BNInputStats", "BNStatsRecorder", "ClassCentroids", "aligned_layer_start", "bn_layers", "bns_loss",
           "class_bns_loss", "class_bns_loss_released", "kd_loss", "zeroq_bn_loss"]


def bn_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """All ``BatchNorm2d`` layers (timm's ``BatchNormAct2d`` included), in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def aligned_layer_start(num_bn: int) -> int:
    """First aligned BN index (forward order) of ClusterQ: floor((n_BN + 1) / 2) - 2 (spec §2.2)."""
    return (num_bn + 1) // 2 - 2


@dataclass
class BNInputStats:
    """Statistics of one BN layer's input x: (N, C, H, W).

    mean, var: (C,) over (N, H, W), biased variance. sample_mean, sample_sq: (N, C) per-sample means of x and x² over
    (H, W), from which any sub-batch's statistics follow exactly. pixels: H·W.
    """

    mean: Tensor
    var: Tensor
    sample_mean: Tensor
    sample_sq: Tensor
    pixels: int
    running_mean: Tensor
    running_var: Tensor

    def subset(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, biased var) per channel over the samples selected by the boolean mask (N,)."""
        mean = self.sample_mean[mask].mean(dim=0)
        return mean, self.sample_sq[mask].mean(dim=0) - mean * mean


class BNStatsRecorder:
    """Forward hooks on every BN layer of ``model`` that record :class:`BNInputStats` in forward order.

    Use as a context manager around the forward passes to record; ``stats`` holds the last pass (cleared by
    :meth:`clear`). ``model`` stays untouched when the recorder is closed.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = bn_layers(model)
        if not self.layers:
            raise ConfigError(f"{type(model).__name__}: has no BatchNorm2d layer; BN-statistics losses (ZeroQ, GDFQ, "
                              "ClusterQ) need a teacher with BatchNorm2d (plain ViTs have none)")
        self.stats: list[BNInputStats] = []
        self.order: list[str] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> BNStatsRecorder:
        for name, module in self.layers:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        self.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.stats = []
        self.order = []

    def _hook(self, name: str):  # noqa: ANN202
        def hook(module: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0]
            flat = x.flatten(2)  # (N, C, H·W)
            self.stats.append(BNInputStats(
                mean=x.mean(dim=(0, 2, 3)), var=x.var(dim=(0, 2, 3), unbiased=False),
                sample_mean=flat.mean(dim=2), sample_sq=(flat * flat).mean(dim=2), pixels=flat.shape[2],
                running_mean=module.running_mean, running_var=module.running_var))  # type: ignore[arg-type]
            self.order.append(name)
        return hook


def bns_loss(stats: Sequence[BNInputStats]) -> Tensor:
    """GDFQ's L_BNS: the **mean** over BN layers of MSE(batch mean, running mean) + MSE(batch var, running var)."""
    terms = [F.mse_loss(s.mean, s.running_mean) + F.mse_loss(s.var, s.running_var) for s in stats]
    return torch.stack(terms).mean()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 20.0,
            alpha: float = 1.0, reduction: str = "batchmean") -> Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T))·α·T² + CE(s, y) (spec §2.1). logits: (B, K), labels: (B,).

    ``reduction="mean"`` (GDFQ, PyTorch's default elementwise mean) divides the KL sum by B·K, ``"batchmean"``
    (ClusterQ) by B.
    """
    if reduction not in ("mean", "batchmean"):
        raise ConfigError(f"method.kd_reduction: got {reduction!r}, expected mean or batchmean")
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()  # float32 under autocast too
    kl_sum = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                      F.softmax(teacher_logits / temperature, dim=1), reduction="sum")
    kl = kl_sum / (student_logits.numel() if reduction == "mean" else student_logits.shape[0])
    return kl * alpha * temperature ** 2 + F.cross_entropy(student_logits, labels)


class ClassCentroids(nn.Module):
    """ClusterQ's per-(class, aligned layer) centroids of BN-input statistics (spec §2.2, §2.3 row 1).

    Buffers ``mean_{l}`` and ``var_{l}``: (num_classes, C_l); ``initialized``: (num_classes,) bool.
    """

    initialized: Tensor

    def __init__(self, num_classes: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.num_layers = len(channels)
        for i, c in enumerate(channels):
            self.register_buffer(f"mean_{i}", torch.zeros(num_classes, c))
            self.register_buffer(f"var_{i}", torch.ones(num_classes, c))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))

    def means(self) -> list[Tensor]:
        return [getattr(self, f"mean_{i}") for i in range(self.num_layers)]

    def variances(self) -> list[Tensor]:
        return [getattr(self, f"var_{i}") for i in range(self.num_layers)]

    @torch.no_grad()
    def update(self, label: int, means: Sequence[Tensor], variances: Sequence[Tensor], decay: float) -> None:
        """Set the class's centroid the first time; later ``new = (1 - decay)·old + decay·current`` (EMA)."""
        first = not bool(self.initialized[label])
        for old_mean, old_var, mean, var in zip(self.means(), self.variances(), means, variances):
            if first:
                old_mean[label] = mean
                old_var[label] = var
            else:
                old_mean[label] = (1 - decay) * old_mean[label] + decay * mean
                old_var[label] = (1 - decay) * old_var[label] + decay * var
        self.initialized[label] = True


def class_bns_loss(stats: Sequence[BNInputStats], labels: Tensor, centroids: ClassCentroids,
                   diversity_weight: float = 0.1, mean_jitter: float = 0.03, var_jitter: float = 0.05,
                   diversity: str = "jitter") -> Tensor:
    """ClusterQ's alignment loss as the method describes it (vitlab default, spec §2.3 rows 2 and 3).

    For each class c present in ``labels`` (B,) with an initialised centroid and each aligned layer l (``stats`` holds
    only the aligned layers): MSE(μ_c, μ̄_c) + MSE(σ²_c, σ̄²_c) on the class's sub-batch statistics, plus
    ``diversity_weight``·[MSE(μ_c, μ̄_c + ξ_μ) + MSE(σ²_c, σ̄²_c + ξ_σ)] with ξ ~ U(±mean_jitter), U(±var_jitter) drawn
    fresh each call (``diversity="jitter"``), or the released gradient-free MSE(stat, stat + ξ) (``"constant"``).
    Clean mean over (present classes × aligned layers); 0 when no class has a centroid yet.
    """
    terms: list[Tensor] = []
    for c in labels.unique().tolist():
        if not bool(centroids.initialized[c]):
            continue
        mask = labels == c
        for s, c_mean, c_var in zip(stats, centroids.means(), centroids.variances()):
            mean, var = s.subset(mask)
            target_mean, target_var = c_mean[c], c_var[c]
            align = F.mse_loss(mean, target_mean) + F.mse_loss(var, target_var)
            jitter_mean = torch.empty_like(mean).uniform_(-mean_jitter, mean_jitter)
            jitter_var = torch.empty_like(var).uniform_(-var_jitter, var_jitter)
            if diversity == "jitter":
                spread = F.mse_loss(mean, target_mean + jitter_mean) + F.mse_loss(var, target_var + jitter_var)
            else:
                spread = F.mse_loss(mean, mean + jitter_mean) + F.mse_loss(var, var + jitter_var)
            terms.append(align + diversity_weight * spread)
    if not terms:
        return stats[0].mean.new_zeros(())
    return torch.stack(terms).mean()


def class_bns_loss_released(stats: Sequence[BNInputStats], labels: Tensor, centroids: ClassCentroids,
                            diversity_weight: float = 0.1, mean_jitter: float = 0.03,
                            var_jitter: float = 0.05) -> Tensor:
    """The released reduction (``clusterq.cbns_reduction: released``): whole-batch statistics against each sample's
    class centroid, summed over samples and aligned layers, with the running sum divided by the number of aligned
    layers inside the layer loop, plus 0.1 × the gradient-free noise term."""
    align = stats[0].mean.new_zeros(())
    spread = stats[0].mean.new_zeros(())
    n_layers = len(stats)
    for c in labels.tolist():
        for s, c_mean, c_var in zip(stats, centroids.means(), centroids.variances()):
            align = align + F.mse_loss(s.mean, c_mean[c]) + F.mse_loss(s.var, c_var[c])
            align = align / n_layers
            noise_mean = torch.empty_like(s.mean).uniform_(-mean_jitter, mean_jitter)
            noise_var = torch.empty_like(s.var).uniform_(-var_jitter, var_jitter)
            spread = spread + F.mse_loss(s.mean, s.mean + noise_mean) + F.mse_loss(s.var, s.var + noise_var)
    return align + diversity_weight * spread


def zeroq_bn_loss(stats: Sequence[BNInputStats], images: Tensor, eps: float = 1e-6) -> Tensor:
    """ZeroQ's distillation loss (spec §2.5): Σ over BN layers of ‖μ - μ_BN‖²/B + ‖σ - σ_BN‖²/B, with per-sample
    per-channel μ and σ = sqrt(var + eps) (unbiased variance over H·W, as ``torch.var``), plus the same term for the
    input images (B, C, H, W) against mean 0 and std 1."""
    batch = images.shape[0]
    loss = images.new_zeros(())
    for s in stats:
        var = (s.sample_sq - s.sample_mean ** 2) * s.pixels / max(s.pixels - 1, 1)
        std = torch.sqrt(var.clamp_min(0) + eps)
        bn_std = torch.sqrt(s.running_var + eps)
        loss = loss + ((s.sample_mean - s.running_mean).norm() ** 2 + (std - bn_std).norm() ** 2) / batch
    flat = images.flatten(2)
    in_mean, in_std = flat.mean(dim=2), torch.sqrt(flat.var(dim=2) + eps)
    return loss + ((in_mean - 0.0).norm() ** 2 + (in_std - 1.0).norm() ** 2) / batch
