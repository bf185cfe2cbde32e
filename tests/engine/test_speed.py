"""``train.compile``, ``train.matmul_precision``, ``train.channels_last``: auto resolution on CPU and CUDA, explicit
values, one-line errors naming the key, the resolved values in a run's config.yaml, and compilation itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from vitlab.cli import main
from vitlab.config import ConfigError, TrainConfig, load_config
from vitlab.engine.checkpoint import load_checkpoint
from vitlab.engine.speed import SpeedSettings, apply_speed, inputs_channels_last, matmul_precision, resolve_speed
from vitlab.engine.trainer import train

RECIPE = "recipes/supervised/resnet18_digits.yaml"
TINY = ["model.name=test_resnet", "data.img_size=16", "data.batch_size=32", "train.progress=false",
        "optim.warmup_epochs=0", "train.epochs=1", "train.max_steps=2", "data.num_workers=0"]
CONV = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
MLP = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))


def test_auto_on_cpu_is_plain_eager_float32() -> None:
    assert resolve_speed(TrainConfig(), "cpu", CONV) == SpeedSettings(compile=False, matmul_precision="highest",
                                                                      channels_last=False)


def test_auto_on_cuda_compiles_uses_tf32_and_channels_last_only_for_conv_models() -> None:
    assert resolve_speed(TrainConfig(), "cuda", CONV) == SpeedSettings(True, "high", True)
    assert resolve_speed(TrainConfig(), "cuda", MLP) == SpeedSettings(True, "high", False)


def test_explicit_values_are_kept_on_any_device() -> None:
    cfg = TrainConfig(compile=True, matmul_precision="medium", channels_last=True)
    assert resolve_speed(cfg, "cpu", MLP) == SpeedSettings(True, "medium", True)
    cfg = TrainConfig(compile=False, matmul_precision="highest", channels_last=False)
    assert resolve_speed(cfg, "cuda", CONV) == SpeedSettings(False, "highest", False)


def test_defaults_are_auto() -> None:
    cfg = load_config(RECIPE)
    assert (cfg.train.compile, cfg.train.matmul_precision, cfg.train.channels_last) == ("auto", "auto", "auto")
    cfg = load_config(RECIPE, ["train.compile=false", "train.matmul_precision=high", "train.channels_last=true"])
    assert (cfg.train.compile, cfg.train.matmul_precision, cfg.train.channels_last) == (False, "high", True)


@pytest.mark.parametrize("override, key", [
    ("train.compile=fast", "train.compile"),
    ("train.compile=2", "train.compile"),
    ("train.matmul_precision=fast", "train.matmul_precision"),
    ("train.matmul_precision=true", "train.matmul_precision"),
    ("train.channels_last=maybe", "train.channels_last"),
])
def test_invalid_values_are_one_line_errors_naming_the_key(override: str, key: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: ") as info:
        load_config(RECIPE, [override])
    assert "\n" not in str(info.value)
    assert main(["train", "-c", RECIPE, "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {key}: ") and "\n" not in err


def test_a_run_writes_the_resolved_values_and_its_checkpoint_keeps_auto(tmp_path: Path) -> None:
    cfg = load_config(RECIPE, [f"out_dir={tmp_path}", "name=speed", *TINY])
    train(cfg)
    written = yaml.safe_load((tmp_path / "speed" / "config.yaml").read_text())["train"]
    assert (written["compile"], written["matmul_precision"], written["channels_last"]) == (False, "highest", False)
    kept = load_checkpoint(tmp_path / "speed" / "last.ckpt")["config"]["train"]
    assert (kept["compile"], kept["matmul_precision"], kept["channels_last"]) == ("auto", "auto", "auto")
    assert torch.get_float32_matmul_precision() == "highest"


def test_compile_true_on_cpu_compiles_the_methods_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compile call is made on what ``compiled_modules()`` names (the real compile is the slow test below)."""
    compiled: list[nn.Module] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    precisions: list[str] = []
    real_set = torch.set_float32_matmul_precision
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda p: (precisions.append(p), real_set(p)))
    cfg = load_config(RECIPE, [f"out_dir={tmp_path}", "name=compiled", "train.compile=true",
                               "train.matmul_precision=medium", "train.channels_last=true", *TINY])
    train(cfg)
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "ImageClassifier"
    assert precisions[0] == "medium" and torch.get_float32_matmul_precision() == "highest"  # restored after the run
    written = yaml.safe_load((tmp_path / "compiled" / "config.yaml").read_text())["train"]
    assert (written["compile"], written["matmul_precision"], written["channels_last"]) == (True, "medium", True)


def test_channels_last_converts_conv_weights_and_image_batches() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    apply_speed(SpeedSettings(compile=False, matmul_precision="highest", channels_last=True), _Holder(model))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    batch = inputs_channels_last({"image": torch.rand(2, 3, 8, 8), "label": torch.tensor([0, 1])})
    assert batch["image"].is_contiguous(memory_format=torch.channels_last) and batch["label"].tolist() == [0, 1]


def test_matmul_precision_is_restored() -> None:
    before = torch.get_float32_matmul_precision()
    with matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
    assert torch.get_float32_matmul_precision() == before


class _Holder(nn.Module):
    """A stand-in method that names its model as the module to compile."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def compiled_modules(self) -> list[nn.Module]:
        return [self.model]


@pytest.mark.slow
def test_real_compile_on_cpu_gives_the_eager_output() -> None:
    """torch.compile (inductor, a C++ compiler) on a tiny model: tens of seconds on a CPU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.rand(2, 3, 8, 8)
    expected = model(x)
    apply_speed(SpeedSettings(compile=True, matmul_precision="highest", channels_last=False), _Holder(model))
    torch.testing.assert_close(model(x), expected)
    assert set(model.state_dict()) == {"0.weight", "0.bias", "3.weight", "3.bias"}  # keys unchanged
