from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.config import load_config
from vitlab.engine.trainer import train
from vitlab.losses.distillation import deit_distillation_loss
from vitlab.methods.base import DataInfo, Progress, build_method, param_groups_weight_decay


def _method(overrides: list[str]):  # type: ignore[no-untyped-def]
    cfg = load_config(None, ["model.name=test_resnet", *overrides])
    info = DataInfo(num_classes=10, channels=3, img_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return build_method(cfg, info)


def test_forward_returns_scalar_loss_and_mixup_path() -> None:
    batch = {"image": torch.rand(8, 3, 16, 16), "label": torch.arange(8) % 10}
    progress = Progress(step=0, epoch=0, total_steps=1, steps_per_epoch=1)
    plain = _method(["method.label_smoothing=0.1"])
    out = plain(batch, progress)
    with torch.no_grad():
        expected = F.cross_entropy(plain.model(batch["image"]), batch["label"], label_smoothing=0.1)
    assert out["loss"].shape == () and out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    mixed = _method(["data.aug.mixup=0.8", "data.aug.cutmix=1.0"])
    out = mixed(batch, progress)
    out["loss"].backward()
    assert all(p.grad is not None for p in mixed.model.parameters() if p.requires_grad)


def test_weight_decay_groups_skip_1d_and_no_weight_decay() -> None:
    import timm

    model = timm.create_model("test_vit", num_classes=10, img_size=32)
    groups = param_groups_weight_decay(model, 0.05)
    no_decay = {id(p) for p in groups[1]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    assert "pos_embed" in names and "cls_token" in names and "blocks.0.norm1.weight" in names
    assert not any(n.endswith("qkv.weight") for n in names)
    with_pos = param_groups_weight_decay(model, 0.05, decay_pos_embed=True)
    assert any(p is model.pos_embed for p in with_pos[0]["params"])


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_distillation_term_is_deit_formula_mixed_with_alpha(kind: str) -> None:
    method = _method(["method.label_smoothing=0.1", f"method.distill_type={kind}", "method.distill_alpha=0.3",
                      "method.distill_tau=2.0"]).train()
    torch.manual_seed(1)
    method.teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).eval()
    batch = {"image": torch.rand(8, 3, 16, 16), "label": torch.arange(8) % 10}
    out = method(batch, Progress(step=0, epoch=0, total_steps=1, steps_per_epoch=1))
    with torch.no_grad():
        logits = method.model(batch["image"])
        distill = deit_distillation_loss(logits, method.teacher(batch["image"]), kind, 2.0)
        ce = F.cross_entropy(logits, batch["label"], label_smoothing=0.1)
    assert out["distill"].item() == pytest.approx(distill.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.7 * ce.item() + 0.3 * distill.item(), rel=1e-6)


def test_distillation_from_a_trained_checkpoint(tmp_path: Path) -> None:
    """The teacher checkpoint is loaded and distilled from through the engine: every logged step has the DeiT term
    and loss = (1 − α)·CE + α·distill. After 3 steps both models are at chance (10.03 % on digits' test split, all
    one class), so no accuracy is asserted."""
    sets = [f"out_dir={tmp_path}", "model.name=test_resnet", "data.img_size=16", "train.max_steps=3",
            "train.progress=false", "data.batch_size=32", "train.log_every=1"]
    train(load_config("recipes/supervised/resnet18_digits.yaml", [*sets, "name=teacher"]))
    student_cfg = load_config("recipes/supervised/resnet18_digits.yaml",
                              [*sets, "name=student", f"method.teacher_ckpt={tmp_path / 'teacher' / 'last.ckpt'}",
                               "method.distill_type=hard", "method.distill_alpha=0.5"])
    train(student_cfg)
    with (tmp_path / "student" / "metrics.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["phase"] == "train"]
    logged: dict[int, dict[str, float]] = {}
    for row in rows:
        logged.setdefault(int(row["step"]), {})[row["name"]] = float(row["value"])
    assert sorted(logged) == [1, 2, 3]
    for values in logged.values():
        # hard distillation of an untrained pair: CE to the teacher's argmax, near log 10 but not the label CE
        assert 1.5 < values["distill"] < 3.0 and abs(values["distill"] - values["ce"]) > 0.05
        assert values["loss"] == pytest.approx(0.5 * values["ce"] + 0.5 * values["distill"], abs=2e-5)
