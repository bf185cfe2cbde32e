"""``vitlab demo`` section: SUN few-shot learning on digits (base digits 0-4, novel 5-9), against supervised-only.

A tiny few-shot Visformer (``test_visformer_fs32``, 32 px, 4x4 final map) is trained three times on the base digits,
all with the same optimiser, batch and total number of epochs:

1. **teacher**: CE on the pooled final map (SUN stage 1);
2. **SUN student**: a new model trained with CE + 0.5 · patch loss against the teacher's location-specific labels
   (top-2 of the 5 base classes, 6 of 16 patches as background), on spatially consistent views (stage 2);
3. **supervised only**: the baseline, CE for as many epochs as teacher + student together.

Both are then scored on 5-way 1-shot and 5-shot episodes of the novel digits with cosine prototypes (Meta-Baseline's
classifier) on features computed once, mean ± 95% CI. Meta-tuning (stage 3) is left out of this quick tour; the
recipes under ``recipes/sun/`` run the full three stages with ``vitlab train``.

The spatially consistent views are drawn once per epoch (teacher epochs, then student epochs: the student trains on
views the teacher never saw) and shared by the three models, so the section pays the PIL augmentation once; the
non-quick section takes about 25 s of one core (measured: 24.4 s CPU for the whole section, 4+4 epochs on 120 base
images per class, 2000 episodes per shot count).

The loop is written here from the library's pieces (:func:`~vitlab.methods.sun.stage2_loss`,
:class:`~vitlab.data.sca.SpatialConsistentAugmentation`, :func:`vitlab.episodes`) so that every step is visible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vitlab.demo.sections import demo_section

IMG_SIZE = 32
BACKBONE = "test_visformer_fs32"
BACKBONE_KWARGS: dict[str, Any] = {"embed_dim": 32, "stem_dim": 8}  # ~87k parameters: fits the minute


@dataclass(frozen=True)
class Plan:
    teacher_epochs: int
    student_epochs: int
    episodes: int  # novel-class episodes per shot count
    base_per_class: int | None  # base training images kept per class (None: all)
    novel_per_class: int | None  # novel images kept per class (None: all)


FULL = Plan(teacher_epochs=4, student_epochs=4, episodes=2000, base_per_class=120, novel_per_class=None)
QUICK = Plan(teacher_epochs=1, student_epochs=1, episodes=100, base_per_class=40, novel_per_class=40)
LR = 2e-3  # AdamW; higher than the spec's 5e-4 · b/512 so that a handful of epochs learn something (both arms)
BATCH = 64


class _Subset(Dataset[dict[str, Any]]):
    """The items ``indices`` of a labelled dataset, with its ``targets`` and ``classes`` (what episodes read)."""

    def __init__(self, base: Any, indices: list[int]) -> None:
        self.base, self.indices = base, indices
        self.targets = [base.targets[i] for i in indices]
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.base[self.indices[i]]  # type: ignore[no-any-return]


def _draw_views(base: Any, sca: Callable[[Tensor], tuple[Tensor, Tensor]], epochs: int) -> list[tuple[Tensor, ...]]:
    """``epochs`` passes of spatially consistent (teacher view, student view) pairs over every base image, drawn once
    as tensors (T, S, labels) so that the three models train on the same views without re-augmenting."""
    images = [base[i]["image"] for i in range(len(base))]
    labels = torch.as_tensor([int(base[i]["label"]) for i in range(len(base))])
    passes: list[tuple[Tensor, ...]] = []
    for _ in range(epochs):
        pairs = [sca(image) for image in images]
        passes.append((torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), labels))
    return passes


def _patch_classifier(num_classes: int, mean: Any, std: Any, local_head: bool) -> Any:
    import timm

    from vitlab.methods.sun import PatchClassifier
    from vitlab.models.classifier import ImageClassifier

    backbone = ImageClassifier(timm.create_model(BACKBONE, num_classes=0, in_chans=3, **BACKBONE_KWARGS), mean, std)
    return PatchClassifier(backbone, num_classes, local_head=local_head)


def _train(model: Any, passes: list[tuple[Tensor, ...]], generator: torch.Generator,
           loss_fn: Callable[[Any, Tensor, Tensor, Tensor], Tensor]) -> list[float]:
    """One epoch per pass of views, shuffled mini-batches of ``BATCH`` (the last partial one dropped); AdamW at
    ``LR``, cosine over the run. Returns the mean loss of every epoch."""
    steps = len(passes[0][2]) // BATCH
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, len(passes) * steps))
    model.train()
    losses = []
    for teacher_views, student_views, labels in passes:
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for step in range(steps):
            batch = order[step * BATCH:(step + 1) * BATCH]
            loss = loss_fn(model, teacher_views[batch], student_views[batch], labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        losses.append(total / max(steps, 1))
    return losses


def plot_fewshot_bars(results: dict[str, list[dict[str, Any]]], out_png: Path, title: str) -> None:
    """Grouped bars: mean accuracy per shot count for every method, with the 95% CI as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({r["shots"] for rows in results.values() for r in rows})
    width = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, (name, rows) in enumerate(results.items()):
        by_shot = {r["shots"]: r for r in rows}
        xs = [i + (k - (len(results) - 1) / 2) * width for i in range(len(shots))]
        ax.bar(xs, [by_shot[s]["mean"] for s in shots], width, yerr=[by_shot[s]["ci95"] for s in shots], capsize=4,
               label=name)
    ax.axhline(100.0 / rows[0]["ways"], color="grey", linestyle=":", label="chance")
    ax.set_xticks(range(len(shots)), [f"{rows[0]['ways']}-way {s}-shot" for s in shots])
    ax.set_ylabel("novel-class accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def run_sun_demo(folder: Path, quick: bool, seed: int = 0) -> dict[str, Any]:
    """Train teacher, SUN student and the supervised baseline; score them on novel episodes. Returns the numbers."""
    from vitlab.config import DataConfig
    from vitlab.data import build_dataset, keep_first_per_class
    from vitlab.data.sca import SCAConfig, SpatialConsistentAugmentation
    from vitlab.evaluation.episodes_command import episodes
    from vitlab.methods.sun import SUNConfig, stage2_loss

    plan = QUICK if quick else FULL
    data = DataConfig(name="digits_fewshot", img_size=IMG_SIZE, channels=3, train_per_class=plan.base_per_class)
    base: Any = build_dataset(data, "base", train=False)
    novel: Any = build_dataset(data, "novel", train=False)
    if plan.novel_per_class is not None:
        novel = _Subset(novel, keep_first_per_class(novel.targets, plan.novel_per_class))
    num_classes = len(base.classes)
    mean, std = base.mean, base.std
    sun_cfg = SUNConfig(top_k=2, bg_ratio=0.4, sca=SCAConfig(scale=[0.35, 1.0], hflip=0.0))  # spec §6
    sca = SpatialConsistentAugmentation(sun_cfg.sca, IMG_SIZE, 3, mean, std)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the SCA draws
    total = plan.teacher_epochs + plan.student_epochs
    passes = _draw_views(base, sca, total)  # the teacher's epochs, then the student's: new views for the student

    def supervised(model: Any, teacher_x: Tensor, student_x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(teacher_x)["logits"], y)

    torch.manual_seed(seed)
    teacher = _patch_classifier(num_classes, mean, std, local_head=False)
    teacher_loss = _train(teacher, passes[:plan.teacher_epochs], generator, supervised)
    teacher.eval().requires_grad_(False)

    def sun(model: Any, teacher_x: Tensor, student_x: Tensor, y: Tensor) -> Tensor:
        return stage2_loss(model, teacher, student_x, teacher_x, y, sun_cfg)["loss"]

    torch.manual_seed(seed + 1)
    student = _patch_classifier(num_classes, mean, std, local_head=True)  # a new model, not the teacher (pitfall 7)
    student_loss = _train(student, passes[plan.teacher_epochs:], generator, sun)
    torch.manual_seed(seed + 1)
    baseline = _patch_classifier(num_classes, mean, std, local_head=False)
    baseline_loss = _train(baseline, passes, generator, supervised)  # every pass: as many epochs as both

    results = {}
    for name, model in (("supervised only", baseline), ("SUN teacher", teacher), ("SUN student", student)):
        report = episodes(model.backbone, novel, ways=5, shots=(1, 5), queries=15,
                          n_episodes=plan.episodes, seed=12345, heads=("cosine",), feature="gap")
        results[name] = report["results"]
    plot_fewshot_bars(results, folder / "sun_fewshot_ci.png", "digits 5-9, cosine prototypes, 95% CI")
    return {"results": results, "plan": plan, "base": base, "losses": {"teacher": teacher_loss, "student": student_loss,
                                                         "supervised": baseline_loss}}


@demo_section("sun", "SUN few-shot learning (tiny Visformer, base digits 0-4 → novel digits 5-9)")
def _demo(folder: Path, quick: bool) -> str:
    out = run_sun_demo(folder, quick)
    plan, results = out["plan"], out["results"]
    rows = []
    for name, rs in results.items():
        by_shot = {r["shots"]: r for r in rs}
        rows.append(f"| {name} | {by_shot[1]['mean']:.1f} ± {by_shot[1]['ci95']:.1f} | "
                    f"{by_shot[5]['mean']:.1f} ± {by_shot[5]['ci95']:.1f} |")
    total = plan.teacher_epochs + plan.student_epochs
    return "\n".join([
        f"A `{BACKBONE}` (width 32, 32 px, 4×4 final map) on {len(out['base'])} images of the base digits 0-4: a "
        "teacher "
        f"({plan.teacher_epochs} epochs), "
        f"then a new SUN student ({plan.student_epochs} epochs, CE + 0.5 · patch loss against the teacher's "
        "top-2 patch labels, 6 of 16 patches background, spatially consistent views), against a supervised-only "
        f"model trained {total} epochs. Scored on the novel digits 5-9: {plan.episodes} episodes, 5-way, 15 "
        "queries, cosine prototypes on the pooled final map computed once, mean ± 1.96·std/√n (%). One seed, no "
        "meta-tuning here; docs/sun.md has the three-stage recipes and the 3-seed table.",
        "", "| model | 5-way 1-shot (%) | 5-way 5-shot (%) |", "|---|---|---|", *rows, "",
        "![few-shot accuracy with 95% CI](sun/sun_fewshot_ci.png)"])
