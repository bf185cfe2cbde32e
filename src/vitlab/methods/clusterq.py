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

from pathlib import Path

import torch
from torch import Tensor

from vitlab.config import RunConfig
from vitlab.demo import demo_section
from vitlab.methods.base import DataInfo, Progress, register_method
from vitlab.methods.gdfq import GDFQ
from vitlab.quant.losses import (
    BNStatsRecorder,
    ClassCentroids,
    aligned_layer_start,
    class_bns_loss,
    class_bns_loss_released,
)

__all__ = ["ClusterQ"]


@register_method("clusterq")
class ClusterQ(GDFQ):
    """GDFQ + class-centroid alignment of deep BN statistics, EMA centroid updates and intra-class diversity."""

    default_kd_reduction = "batchmean"
    default_augment_prob = 0.5

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
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


def generated_features(method: GDFQ, samples_per_class: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Teacher pooled features (N, D) of generator samples, ``samples_per_class`` per class drawn in one mixed batch
    (the generator's BN runs in training mode, as during training), and their labels (N,)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(method.data.num_classes).repeat(samples_per_class)
    z = torch.randn(len(labels), method.mcfg.latent_dim, generator=generator)
    with torch.no_grad():
        images = method.generator.train()(z, labels)
        return method.teacher.embed(method.to_pixels(images)), labels


def plot_generated_features(methods: dict[str, GDFQ], out_png: Path, samples_per_class: int = 32) -> dict[str, float]:
    """PCA of teacher features of generated samples, one panel per method, coloured by class (spec §6 diagnostic).

    Returns each method's silhouette score of the features by class (higher = better separated classes).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import silhouette_score

    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 4.2), squeeze=False)
    scores: dict[str, float] = {}
    for ax, (name, method) in zip(axes[0], methods.items()):
        feats, labels = generated_features(method, samples_per_class)
        centred = feats - feats.mean(0)
        _, _, v = torch.pca_lowrank(centred, q=2, center=False)
        xy = (centred @ v[:, :2]).numpy()
        scores[name] = float(silhouette_score(feats.numpy(), labels.numpy()))
        ax.scatter(xy[:, 0], xy[:, 1], c=labels.numpy(), cmap="tab10", s=6)
        ax.set_title(f"{name} (silhouette {scores[name]:.3f})")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("teacher features of generated samples (PCA), coloured by class")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return scores


@demo_section("clusterq", "Data-free quantization: ClusterQ vs GDFQ at W4A4 (ResNet-20 on digits)")
def _demo(folder: Path, quick: bool) -> str:
    """Train the FP teacher, quantise it without data with GDFQ and ClusterQ, plot generated-sample features."""
    from vitlab.config import load_config
    from vitlab.demo import recipe_path
    from vitlab.engine.checkpoint import load_method
    from vitlab.engine.trainer import train
    from vitlab.quant.command import quantize

    common = [f"out_dir={folder}", "train.progress=false"]
    teacher_sets = common + (["train.epochs=2", "train.max_steps=6"] if quick else [])
    teacher_cfg = load_config(recipe_path("quant/resnet20_digits_teacher.yaml"), teacher_sets)
    train(teacher_cfg, overwrite=True)
    teacher = str(teacher_cfg.run_dir / "last.ckpt")
    short = ["train.epochs=2", "method.iters_per_epoch=2", "method.warmup_epochs=1", "method.soft_stat_epoch=0",
             "method.calib_epochs=1"] if quick else []
    rows, methods = [], {}
    for name in ("gdfq", "clusterq"):
        summary = quantize(str(recipe_path(f"quant/{name}_resnet20_digits.yaml")), teacher, name, 4, 4,
                           common + short, overwrite=True)
        rows.append(f"| {name} | {summary['fp_top1']:.2f} | {summary['quant_top1_simulated']:.2f} | "
                    f"{summary['fp32_bytes'] / 1e6:.3f} | {summary['quantized_bytes'] / 1e6:.3f} |")
        methods["GDFQ" if name == "gdfq" else "ClusterQ"] = load_method(summary["ckpt"])[0]
    scores = plot_generated_features(methods, folder / "generated_features.png", 8 if quick else 32)  # type: ignore[arg-type]
    return ("Teacher `recipes/quant/resnet20_digits_teacher.yaml`, then `vitlab quantize` with "
            "`recipes/quant/{gdfq,clusterq}_resnet20_digits.yaml` at W4A4" + (" (shortened: --quick)" if quick else "")
            + ". Quantised accuracy is simulated (fake quantisation); no real training image is used after the "
            "teacher.\n\n| method | FP top-1 (%) | W4A4 top-1 (%, simulated) | FP32 size (MB) | W4A4 size (MB) |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\nTeacher features of generated samples "
            f"(silhouette by class: GDFQ {scores['GDFQ']:.3f}, ClusterQ {scores['ClusterQ']:.3f}):\n\n"
            "![generated features](clusterq/generated_features.png)\n")
