"""``vitlab demo`` section: ClusterQ against GDFQ at W4A4 (ResNet-20 on digits), with a PCA of generated-sample
features."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from vitlab.demo.sections import demo_section
from vitlab.methods.gdfq import GDFQ


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


TEACHER_EPOCHS = 8  # the teacher recipe trains 30
# the quantisation recipes run 12 epochs of 30 iterations (4 warm-up, 4 BN calibration); the demo a third of that
DEMO_QUANT = ["train.epochs=4", "method.iters_per_epoch=20", "method.warmup_epochs=1", "method.calib_epochs=1",
              "method.soft_stat_epoch=1"]


@demo_section("clusterq", "Data-free quantization: ClusterQ vs GDFQ at W4A4 (ResNet-20 on digits)", seconds=75)
def _demo(folder: Path, quick: bool) -> str:
    """Train the FP teacher, quantise it without data with GDFQ and ClusterQ, plot generated-sample features."""
    from vitlab.config import load_config
    from vitlab.demo.sections import recipe_path
    from vitlab.engine.checkpoint import load_method
    from vitlab.engine.trainer import train
    from vitlab.quant.command import quantize

    common = [f"out_dir={folder}", "train.progress=false"]
    teacher_sets = common + (["train.epochs=2", "train.max_steps=6"] if quick else
                             [f"train.epochs={TEACHER_EPOCHS}", f"train.eval_every={TEACHER_EPOCHS}"])
    teacher_cfg = load_config(recipe_path("quant/resnet20_digits_teacher.yaml"), teacher_sets)
    train(teacher_cfg, overwrite=True)
    teacher = str(teacher_cfg.run_dir / "last.ckpt")
    short = ["train.epochs=2", "method.iters_per_epoch=2", "method.warmup_epochs=1", "method.soft_stat_epoch=0",
             "method.calib_epochs=1"] if quick else DEMO_QUANT
    rows, methods = [], {}
    for name in ("gdfq", "clusterq"):
        summary = quantize(str(recipe_path(f"quant/{name}_resnet20_digits.yaml")), teacher, name, 4, 4,
                           common + short, overwrite=True)
        rows.append(f"| {name} | {summary['fp_top1']:.2f} | {summary['quant_top1_simulated']:.2f} | "
                    f"{summary['fp32_bytes'] / 1e6:.3f} | {summary['quantized_bytes'] / 1e6:.3f} |")
        methods["GDFQ" if name == "gdfq" else "ClusterQ"] = load_method(summary["ckpt"])[0]
    scores = plot_generated_features(methods, folder / "generated_features.png", 8 if quick else 32)  # type: ignore[arg-type]
    return ("ClusterQ quantises a trained network without data: a generator is trained to match the teacher's "
            "BatchNorm statistics and, class by class, clusters of its deep features, and the 4-bit student is "
            "distilled on the generated images; the baseline GDFQ matches the statistics only. Teacher "
            "`recipes/quant/resnet20_digits_teacher.yaml`, then `vitlab quantize` with "
            "`recipes/quant/{gdfq,clusterq}_resnet20_digits.yaml` at W4A4"
            + (" (shortened: --quick)" if quick else f" (teacher {TEACHER_EPOCHS} epochs instead of 30; quantisation "
               "4 epochs of 20 iterations instead of 12 of 30, too short to be sure of showing the recipes' gap "
               "between the two)") + ". Quantised accuracy is simulated (fake quantisation); no real training image "
            "is used after the teacher.\n\n"
            "| method | FP top-1 (%) | W4A4 top-1 (%, simulated) | FP32 size (MB) | W4A4 size (MB) |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\nTeacher features of generated samples "
            f"(silhouette by class: GDFQ {scores['GDFQ']:.3f}, ClusterQ {scores['ClusterQ']:.3f}):\n\n"
            "![generated features](clusterq/generated_features.png)\n")
