"""Mugs: construction (parameter counts of specs/mugs.md §2.7), schedules (§5), mechanics, bad input, and the
2-process gloo run against 1 process with the doubled batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.multiprocessing as mp
from torch.utils.data import default_collate

from vitlab.config import ConfigError, load_config
from vitlab.engine.schedules import cosine_schedule
from vitlab.methods.base import Progress, data_info_from
from vitlab.methods.mugs import (
    GroupConfig,
    GroupHead,
    Mugs,
    ProjectionPredictionHead,
    clip_gradients_per_parameter,
    relation_block,
    teacher_temp_schedule,
)

RECIPE = "recipes/mugs/vit_tiny_digits.yaml"
# A fast variant of the small recipe: 16 px digits, 2 local crops of 8 px, small buffers.
TINY = ["data.img_size=16", "data.batch_size=8", "method.crops.global_size=16", "method.crops.local_size=8",
        "method.crops.local_number=2", "method.ids.queue_size=32", "method.lgds.queue_size=32",
        "method.lgds.memory_size=32", "method.lgds.top_k=4", "method.gds.prototypes=64", "method.head_hidden_dim=32",
        "method.predictor_hidden_dim=32", "method.head_out_dim=16", "method.gds.bottleneck_dim=16",
        "method.eval.probe_epochs=2", "model.kwargs.depth=2", "model.drop_path_rate=0",
        "method.crops.backend=pil"]  # these tests feed per-image crops (tests/methods/test_mugs_batch_crops.py: batch)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_vit_small_parameter_counts_match_the_spec() -> None:
    backbone = timm.create_model("vit_small_patch16_224", num_classes=0)
    assert _count(backbone) == 21_665_664
    assert _count(relation_block(384, 6)) == 1_774_464 == 12 * 384**2 + 13 * 384
    assert _count(ProjectionPredictionHead(384, 2048, 256, 4096)) == 7_602_176
    assert _count(ProjectionPredictionHead(384, 2048, 256, None)) == 5_505_024
    group = GroupHead(384, 2048, 256, 65536, norm_last_layer=False)
    assert _count(group) == 22_352_128
    assert group.last_layer.weight_g.requires_grad
    assert not GroupHead(384, 2048, 256, 16, norm_last_layer=True).last_layer.weight_g.requires_grad


def test_schedules_match_the_spec_values() -> None:
    temp = teacher_temp_schedule(GroupConfig(teacher_temp=0.07, warmup_teacher_temp=0.04,
                                             warmup_teacher_temp_epochs=30), epochs=300, steps_per_epoch=2)
    per_epoch = temp[::2]
    assert per_epoch[0] == pytest.approx(0.04) and per_epoch[1] == pytest.approx(0.041034, abs=1e-6)
    assert per_epoch[15] == pytest.approx(0.055517, abs=1e-6) and per_epoch[29] == pytest.approx(0.07)
    assert np.allclose(per_epoch[30:], 0.07) and len(temp) == 600
    momentum = cosine_schedule(0.996, 1.0, 100, 10)
    assert momentum[0] == pytest.approx(0.996) and momentum[500] == pytest.approx(0.998)
    assert momentum[-1] == pytest.approx(1.0, abs=1e-8)
    wd = cosine_schedule(0.04, 0.1, 300, 10)
    assert wd[1500] == pytest.approx(0.07)
    lr = cosine_schedule(0.0032, 1e-6, 100, 100, warmup_epochs=10)  # batch 1024: 8e-4 x 1024 / 256
    assert lr[1000] == pytest.approx(0.0032) and lr[1000 + 4500] == pytest.approx(0.0016, rel=1e-3)
    assert lr[-1] == pytest.approx(1e-6, rel=1e-2)


def _method(overrides: list[str] | None = None, backbone: str | None = None) -> tuple[Mugs, dict]:
    cfg = load_config(RECIPE, [*TINY, *(overrides or [])])
    if backbone is not None:
        cfg.model.name, cfg.model.kwargs = backbone, {}
    datasets = Mugs.build_datasets(cfg)
    torch.manual_seed(0)
    return Mugs(cfg, data_info_from(cfg, datasets["train"])), datasets


def test_train_compile_compiles_the_student_and_the_teacher() -> None:
    method, _ = _method()
    assert method.compiled_modules() == [method.student, method.teacher]


def _batch(datasets: dict, n: int, start: int = 0) -> dict:
    from vitlab.engine.seeding import seed_everything

    seed_everything(1)  # the crops draw from random, numpy and torch
    return default_collate([datasets["train"][i] for i in range(start, start + n)])


def _progress(epoch: int = 0, momentum: float = 0.99) -> Progress:
    return Progress(step=0, epoch=epoch, total_steps=10, steps_per_epoch=5,
                    values={"lr": 1e-3, "weight_decay": 0.04, "teacher_temp": 0.04, "teacher_momentum": momentum})


def test_step_shapes_memory_writes_freeze_and_teacher_without_gradient(step_helper) -> None:
    method, datasets = _method()
    batch = _batch(datasets, 8)
    assert batch["teacher_globals"].shape == (8, 2, 1, 16, 16) and batch["student_locals"].shape == (8, 2, 1, 8, 8)
    helper = step_helper(method)
    optimizer = helper.optimizers["main"]
    prototypes_before = method.student.group_head.last_layer.weight_v.clone()
    teacher_memory_before = method.teacher_memory.bank.clone()
    out = method.training_step(batch, _progress(epoch=0), helper)
    assert set(out) >= {"loss", "ids", "lgds", "gds"} and torch.isfinite(out["loss"])
    # total = mean of the three losses at weights 1, 1, 1
    assert float(out["loss"].detach()) == pytest.approx(float((out["ids"] + out["lgds"] + out["gds"]) / 3), rel=1e-5)
    assert all(p.grad is None for p in method.teacher.parameters())
    # epoch 0 < freeze_last_layer: the prototypes did not move, the rest of the student did
    assert torch.equal(method.student.group_head.last_layer.weight_v, prototypes_before)
    assert optimizer.state  # AdamW stepped
    # the teacher memory took all 8 first-crop vectors, the student memory only the weak-flagged ones
    assert int(method.teacher_memory.pointer) == 8
    assert not torch.equal(method.teacher_memory.bank[:8], teacher_memory_before[:8])
    assert int(method.student_memory.pointer) == int(batch["weak_flag"].sum())
    # the patch embedding trains at 0.2 x lr; pos_embed and cls_token are decayed, 1-D parameters are not
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    vit = method.student.backbone.model
    assert groups[id(vit.patch_embed.proj.weight)]["lr_scale"] == pytest.approx(0.2)
    assert groups[id(vit.pos_embed)]["apply_wd"] and groups[id(vit.cls_token)]["apply_wd"]
    assert not groups[id(vit.norm.weight)]["apply_wd"]


def test_ema_momentum_one_keeps_and_zero_copies_the_student() -> None:
    method, _ = _method()
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(torch.randn_like(p))
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    method.on_optimizer_step(_progress(momentum=1.0))
    assert all(torch.equal(v, teacher_before[k]) for k, v in method.teacher.state_dict().items())
    method.on_optimizer_step(_progress(momentum=0.0))
    student = dict(method.student.named_parameters())
    for name, p in method.teacher.named_parameters():
        torch.testing.assert_close(p, student[name], rtol=0, atol=0)
    assert not any("predictor" in n for n, _ in method.teacher.named_parameters())


def test_per_parameter_clipping_bounds_each_gradient_not_the_global_norm() -> None:
    params = [torch.nn.Parameter(torch.zeros(10)) for _ in range(3)]
    for p, scale in zip(params, (10.0, 0.5, 5.0)):
        p.grad = torch.full((10,), scale)
    clip_gradients_per_parameter(params, 3.0)
    norms = [float(p.grad.norm()) for p in params]
    assert norms[0] == pytest.approx(3.0, rel=1e-5) and norms[2] == pytest.approx(3.0, rel=1e-5)
    assert norms[1] == pytest.approx(float(torch.full((10,), 0.5).norm()))  # untouched: below the bound


def test_bad_settings_name_the_key_and_what_would_work() -> None:
    with pytest.raises(ConfigError, match=r"method.ids.queue_size: got 36, expected a multiple of the global batch 8"):
        _method(["method.ids.queue_size=36"])
    with pytest.raises(ConfigError, match=r"method.crops.local_size: got 6, .*patch size 4.*e.g. 4 or 8"):
        _method(["method.crops.local_size=6"])
    with pytest.raises(ConfigError, match="LGDS .* needs a ViT backbone with patch tokens"):
        _method(backbone="resnet18")
    with pytest.raises(ConfigError, match="method.lgds.query"):
        load_config(RECIPE, ["method.lgds.query=cls"])


def test_gds_only_runs_on_a_cnn_backbone() -> None:
    method, datasets = _method(["method.loss_weights=[0,0,1]"], backbone="resnet18")
    out = method(_batch(datasets, 4), _progress())
    assert set(out) == {"gds", "loss"}
    # weights (0, 0, 1): the total is the GDS term alone, a cross-entropy between distributions (> 0)
    assert out["loss"].item() == pytest.approx(out["gds"].item(), rel=1e-6) and out["gds"].item() > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _step_state(method: Mugs) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in method.state_dict().items()
            if any(s in k for s in ("queue", "memory", "center"))}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        method, datasets = _method(["data.batch_size=4"])
        full = _batch(datasets, 8)
        local = {k: v[rank * 4:(rank + 1) * 4] for k, v in full.items()}
        out = method(local, _progress())
        torch.save({"loss": out["loss"].detach(), "state": _step_state(method)}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and timm: about 20 s on a quiet machine, a minute when busy
def test_two_gloo_processes_equal_one_process_with_the_doubled_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    method, datasets = _method(["data.batch_size=8"])
    out = method(_batch(datasets, 8), _progress())
    single = _step_state(method)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # every loss is a per-sample mean, so the mean of the rank losses is the 2B loss
    assert float((ranks[0]["loss"] + ranks[1]["loss"]) / 2) == pytest.approx(float(out["loss"].detach()), rel=1e-5)
    assert set(single) == set(ranks[0]["state"]) and len(single) >= 9
    for key, value in single.items():
        for r in ranks:
            torch.testing.assert_close(r["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
