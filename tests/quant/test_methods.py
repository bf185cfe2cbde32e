"""ZeroQ / GDFQ / ClusterQ as vitlab methods: one manual-optimisation step each, the data-free guarantee, errors,
and the int8 export (vitlab spec clusterq §2, §5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import vitlab.data.build as data_build
from vitlab.cli import main
from vitlab.config import ConfigError, load_config
from vitlab.engine.checkpoint import load_method
from vitlab.methods.base import Progress, build_method
from vitlab.methods.data_free import DataFreeQuantMethod, teacher_data_info
from vitlab.methods.gdfq import GDFQ
from vitlab.quant.command import export_int8, quantize
from vitlab.quant.quantizer import QuantizationError, activation_quantizers

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "quant"


def _method(name: str, teacher: Path, *extra: str) -> DataFreeQuantMethod:
    cfg = load_config(RECIPES / f"{name}_resnet20_digits.yaml",
                      [f"method.teacher_ckpt={teacher}", "model.name=test_cifar_resnet", *extra])
    return build_method(cfg, teacher_data_info(cfg))  # type: ignore[return-value]


def _step(method: GDFQ, epoch: int, step_helper, steps_per_epoch: int = 2) -> dict[str, torch.Tensor]:
    helper = step_helper(method)
    schedules = method.schedules(12 * steps_per_epoch, steps_per_epoch)
    step = epoch * steps_per_epoch
    values = {k: float(v[step]) for k, v in schedules.items()} | {"lr": 1e-3, "weight_decay": 1e-4}
    progress = Progress(step=step, epoch=epoch, total_steps=12 * steps_per_epoch, steps_per_epoch=steps_per_epoch,
                        values=values)
    method.train()
    assert set(helper.optimizers) == {"student", "generator"}
    return method.training_step({"label": torch.arange(10)}, progress, helper)


def test_gdfq_step_updates_student_keeps_bn_and_teacher(teacher_ckpt: Path, step_helper) -> None:
    torch.manual_seed(0)
    method = _method("gdfq", teacher_ckpt)
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    bn_before = {k: v.clone() for k, v in method.student.state_dict().items() if "running" in k}
    weight_before = method.student.model.conv1.weight.detach().clone()
    generator_before = method.generator.project.weight.detach().clone()
    out = _step(method, epoch=5, step_helper=step_helper)  # after warm-up: both optimizers step
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["loss_g"])
    assert not method.student.training and not method.teacher.training  # eval mode throughout
    for k, v in method.student.state_dict().items():
        if k in bn_before:
            assert torch.equal(v, bn_before[k]), k  # student BN buffers unchanged
    assert all(torch.equal(v, teacher_before[k]) for k, v in method.teacher.state_dict().items())
    assert not torch.equal(method.student.model.conv1.weight, weight_before)
    assert not torch.equal(method.generator.project.weight, generator_before)


def test_warmup_freezes_student_and_calibrates_ranges(teacher_ckpt: Path, step_helper) -> None:
    method = _method("gdfq", teacher_ckpt)
    weight_before = method.student.model.conv1.weight.detach().clone()
    _step(method, epoch=0, step_helper=step_helper)
    assert torch.equal(method.student.model.conv1.weight, weight_before)
    assert all(int(q.updates) == 1 for q in activation_quantizers(method.student))
    _step(method, epoch=5, step_helper=step_helper)  # past calib_epochs: ranges frozen
    assert all(int(q.updates) == 1 for q in activation_quantizers(method.student))


def test_clusterq_centroids_and_alignment(teacher_ckpt: Path, step_helper) -> None:
    torch.manual_seed(0)
    method = _method("clusterq", teacher_ckpt, "method.centroid_samples=4")
    n_bn = len(method.bn_order)
    assert method.align_start == (n_bn + 1) // 2 - 2
    assert method.kd_reduction == "batchmean" and method.augment_prob == 0.5
    assert "cbns" not in _step(method, epoch=3, step_helper=step_helper)
    method.update_centroids()
    assert bool(method.centroids.initialized.any())
    out = _step(method, epoch=5, step_helper=step_helper)
    assert "cbns" in out and float(out["cbns"]) > 0


def test_clusterq_released_centroids_are_running_buffers(teacher_ckpt: Path) -> None:
    method = _method("clusterq", teacher_ckpt, "method.centroid_source=running_buffers")
    method.update_centroids()
    from vitlab.quant.losses import bn_layers

    named = dict(bn_layers(method.teacher))
    last_bn = named[method.bn_order[-1]]
    assert bool(method.centroids.initialized.all())
    assert torch.equal(method.centroids.means()[-1][3], last_bn.running_mean)


def test_zeroq_distills_and_calibrates(teacher_ckpt: Path, step_helper) -> None:
    method = _method("zeroq", teacher_ckpt, "method.distill_images=4")
    helper = step_helper(method)
    before = method.distilled.detach().clone()
    progress = Progress(step=0, epoch=0, total_steps=1, steps_per_epoch=1, values={})
    out = method.training_step({"label": torch.zeros(4, dtype=torch.long)}, progress, helper)
    assert torch.isfinite(out["loss"]) and not torch.equal(method.distilled, before)
    assert all(int(q.updates) == 1 and q.mode == "minmax" for q in activation_quantizers(method.student))


def test_vit_teacher_is_a_clear_error(tmp_path: Path) -> None:
    from tests.quant.conftest import save_teacher

    vit = save_teacher(tmp_path / "vit.ckpt", "vit_tiny_patch16_224")
    with pytest.raises(QuantizationError, match="no BatchNorm2d"):
        _method("gdfq", vit, "model.name=vit_tiny_patch16_224")


def test_bad_bits_in_recipe_and_cli(teacher_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="method.wbits"):
        load_config(RECIPES / "gdfq_resnet20_digits.yaml", ["method.wbits=9"])
    code = main(["quantize", "-c", str(RECIPES / "gdfq_resnet20_digits.yaml"), "--ckpt", str(teacher_ckpt),
                 "--wbits", "1", "--abits", "4"])
    assert code == 2 and "--wbits" in capsys.readouterr().err


def _tiny_quantize(teacher: Path, out: Path, bits: int, *extra: str) -> dict:
    return quantize(str(RECIPES / "gdfq_resnet20_digits.yaml"), str(teacher), "gdfq", bits, bits,
                    [f"out_dir={out}", "model.name=test_cifar_resnet", "train.epochs=2", "method.iters_per_epoch=1",
                     "method.warmup_epochs=1", "data.batch_size=8", "data.eval_batch_size=512", *extra])


def test_quantize_reads_no_training_data(teacher_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[str] = []
    real_build = data_build.build_dataset

    def spy(cfg, split, train):  # noqa: ANN001, ANN202
        requested.append(split)
        return real_build(cfg, split, train)

    monkeypatch.setattr("vitlab.data.build_dataset", spy)
    seen_keys: set[str] = set()
    original = GDFQ.training_step

    def watch(self, batch, progress, helper):  # noqa: ANN001, ANN202
        seen_keys.update(batch)
        return original(self, batch, progress, helper)

    monkeypatch.setattr(GDFQ, "training_step", watch)
    summary = _tiny_quantize(teacher_ckpt, tmp_path, 8)
    assert requested == ["test"]  # the quantize path never builds a training split
    assert seen_keys == {"label"}  # and no image reaches a training step
    assert summary["quantized_bytes"] < summary["fp32_bytes"] / 3


@pytest.mark.slow
def test_int8_export_runs_through_load_method_and_refuses_w4a4(teacher_ckpt: Path, tmp_path: Path) -> None:
    summary = _tiny_quantize(teacher_ckpt, tmp_path, 8)
    result = export_int8(summary["ckpt"], tmp_path / "export")
    int8, _ = load_method(result["path"])  # what vitlab eval --ckpt does
    quantized, _ = load_method(summary["ckpt"])
    x = torch.rand(16, 3, 16, 16)
    with torch.no_grad():
        fp = quantized.teacher(x)
        assert (int8.eval_model()(x) - fp).abs().max() < 0.1 * fp.abs().max() + 0.1
    w4 = _tiny_quantize(teacher_ckpt, tmp_path, 4)
    with pytest.raises(ConfigError, match="W4A4 stays a simulation"):
        export_int8(w4["ckpt"], tmp_path / "export4")


def test_int8_conv_bn_relu_close_to_fp() -> None:
    from vitlab.quant.int8 import convert_int8

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    net[1].running_mean.uniform_(-0.2, 0.2)
    calibration = torch.randn(64, 3, 8, 8)
    quantized = convert_int8(net, calibration)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in quantized.modules())  # folded
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        fp, q = net(x), quantized(x)
    assert q.dtype == torch.float32 and (q - fp).abs().max() < 0.05 * fp.abs().max()
