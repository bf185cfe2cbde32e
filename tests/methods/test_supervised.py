from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from vitlab.config import load_config
from vitlab.engine.trainer import train
from vitlab.methods.base import DataInfo, Progress, build_method, param_groups_weight_decay
from vitlab.methods.supervised import distillation_loss, soft_target_cross_entropy


def test_soft_target_cross_entropy_matches_loop() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(5, 4), torch.softmax(torch.randn(5, 4), -1)
    total = 0.0
    for i in range(5):
        z = [math.exp(v) for v in logits[i].tolist()]
        total += -sum(t * math.log(zk / sum(z)) for t, zk in zip(target[i].tolist(), z))
    assert abs(float(soft_target_cross_entropy(logits, target)) - total / 5) < 1e-5
    labels = torch.tensor([0, 1, 2, 3, 0])
    assert torch.allclose(soft_target_cross_entropy(logits, F.one_hot(labels, 4).float()),
                          F.cross_entropy(logits, labels))


def test_distillation_losses_match_loop() -> None:
    torch.manual_seed(1)
    s, t, tau = torch.randn(3, 5), torch.randn(3, 5), 2.0
    kl = 0.0
    for i in range(3):
        p_t = torch.softmax(t[i] / tau, -1).tolist()
        p_s = torch.softmax(s[i] / tau, -1).tolist()
        kl += sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    assert abs(float(distillation_loss(s, t, "soft", tau)) - kl / 3 * tau * tau) < 1e-5
    hard = float(distillation_loss(s, t, "hard", tau))
    assert abs(hard - float(F.cross_entropy(s, t.argmax(-1)))) < 1e-6


def _method(overrides: list[str]):  # type: ignore[no-untyped-def]
    cfg = load_config(None, ["model.name=test_resnet", *overrides])
    info = DataInfo(num_classes=10, channels=3, img_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return build_method(cfg, info)


def test_forward_returns_scalar_loss_and_mixup_path() -> None:
    batch = {"image": torch.rand(8, 3, 16, 16), "label": torch.arange(8) % 10}
    progress = Progress(step=0, epoch=0, total_steps=1, steps_per_epoch=1)
    plain = _method(["method.label_smoothing=0.1"])
    out = plain(batch, progress)
    assert out["loss"].shape == () and torch.isfinite(out["loss"])
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


def test_distillation_from_a_trained_checkpoint(tmp_path: Path) -> None:
    sets = [f"out_dir={tmp_path}", "model.name=test_resnet", "data.img_size=16", "train.max_steps=3",
            "train.progress=false", "data.batch_size=32"]
    train(load_config("recipes/supervised/resnet18_digits.yaml", [*sets, "name=teacher"]))
    student_cfg = load_config("recipes/supervised/resnet18_digits.yaml",
                              [*sets, "name=student", f"method.teacher_ckpt={tmp_path / 'teacher' / 'last.ckpt'}",
                               "method.distill_type=hard"])
    metrics = train(student_cfg)
    assert 0.0 <= metrics["top1"] <= 100.0
