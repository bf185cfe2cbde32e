"""The `vitlab` command: exit codes, one-line errors, info, and train -> eval -> export -> load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from vitlab.cli import main

RECIPE = "recipes/supervised/resnet18_digits.yaml"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vitlab", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})


def test_unknown_override_key_is_one_line_and_exit_2() -> None:
    res = run_cli("train", "-c", RECIPE, "--set", "optim.lrr=1")
    assert res.returncode == 2
    lines = [line for line in res.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "optim.lrr" in lines[0] and "Traceback" not in res.stderr


@pytest.mark.parametrize("argv, needle", [
    (["train", "-c", "recipes/nope.yaml"], "recipes/nope.yaml"),
    (["train", "-c", RECIPE, "--set", "model.name=not_a_model"], "model.name"),
    (["eval", "--ckpt", "missing.ckpt"], "missing.ckpt"),
    (["info", "not_a_model"], "not_a_model"),
    (["export", "--ckpt", "missing.ckpt"], "missing.ckpt"),
])
def test_bad_input_exits_2_naming_the_culprit(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err


@pytest.mark.parametrize("argv, line", [
    (["train", "-c", "recipes/hat/vit_tiny_digits.yaml", "--set", "method.eps_space=pixels"],
     "error: method.eps_space: got 'pixels', expected one of normalized, pixel"),
    (["train", "-c", RECIPE, "--set", "method.distill_type=none"],
     "error: method.distill_type: got 'none', expected one of soft, hard"),
    (["train", "-c", RECIPE, "--set", "train.precision=fp8"],
     "error: train.precision: got 'fp8', expected one of 32-true, 32, bf16-mixed, 16-mixed, bf16-true"),
])
def test_a_value_outside_the_fixed_choices_exits_2(argv: list[str], line: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == line


def test_info_resnet18_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "resnet18", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 11_689_512
    assert abs(info["flops"] / 1e9 - 1.819) < 0.005
    assert info["input_size"] == [3, 224, 224]


def test_info_counts_attention_explicitly(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "deit_small_patch16_224", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert abs(info["flops"] / 1e9 - 4.608) < 0.01  # 4.251 G if fused attention were invisible to fvcore


def test_train_eval_export_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sets = ["--set", f"out_dir={tmp_path}", "--set", "name=cli", "--set", "model.name=test_resnet",
            "--set", "data.img_size=16", "--set", "train.max_steps=6", "--set", "train.progress=false"]
    assert main(["train", "-c", RECIPE, *sets]) == 0
    ckpt = tmp_path / "cli" / "last.ckpt"
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(ckpt), "--confusion", "--out", str(tmp_path / "eval.json")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    cm = torch.tensor(metrics["confusion"])
    assert cm.shape == (10, 10) and int(cm.sum()) == 359
    assert abs(100.0 * cm.diag().sum().item() / 359 - metrics["top1"]) < 1e-3
    assert main(["export", "--ckpt", str(ckpt), "--format", "safetensors"]) == 0
    export = tmp_path / "cli" / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 10

    from vitlab.engine.checkpoint import load_eval_model
    from vitlab.engine.export import load_exported

    x = torch.rand(4, 3, 16, 16)
    reference = load_eval_model(ckpt)(x)
    torch.testing.assert_close(load_exported(export)(x), reference)
    # timm alone: the safetensors file + the normalisation stats in pretrained_cfg
    model = timm.create_model("test_resnet", pretrained=True, **config["model_args"],
                              pretrained_cfg_overlay={"file": str(export / "model.safetensors"),
                                                      "num_classes": 10}).eval()
    mean = torch.tensor(config["pretrained_cfg"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["pretrained_cfg"]["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(model((x - mean) / std), reference)
    assert main(["export", "--ckpt", str(ckpt), "--format", "tflite"]) == 2


def test_models_lists_vitlab_models(capsys: pytest.CaptureFixture) -> None:
    from vitlab.models import list_vitlab_models

    names = list_vitlab_models("test_*")
    assert len(names) >= 2
    assert main(["models", "test_*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == names
    assert all(r["params"] > 0 for r in rows)
