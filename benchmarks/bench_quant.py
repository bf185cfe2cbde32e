"""CPU latency and size of real int8 models against their FP32 originals, measured in the same run, and the
throughput of GDFQ's generators (vitlab spec clusterq §2.6).

Models: the pretrained CIFAR-10 ResNet-18 of the pyautoattack wheel (32 px) and, when present, the digits ResNet-20
teacher of the small-scale plan (runs/resnet20_digits_teacher/last.ckpt, 16 px). int8: torch.ao FX graph mode, x86
engine, BN folded, calibrated on ZeroQ-distilled images (no real data).

    python benchmarks/bench_quant.py [--threads 2] [--reps 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import vitlab.quant  # noqa: F401  (registers cifar_resnet20)
from vitlab.quant.generator import CifarGenerator, ImageNetGenerator
from vitlab.quant.int8 import convert_int8, zeroq_distill


def latency_ms(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    """Median wall time of one forward pass, after 3 warm-up passes."""
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def autoattack_resnet18() -> tuple[str, nn.Module, int]:
    import timm

    from vitlab.models.cifar_resnet import load_state_dict_file

    spec = importlib.util.find_spec("pyautoattack")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "examples" / "model_test.pt"
    model = timm.create_model("cifar_resnet18", num_classes=10)
    return "cifar_resnet18 (pyautoattack weights)", load_state_dict_file(model, str(path)).eval(), 32


def digits_resnet20() -> tuple[str, nn.Module, int] | None:
    path = Path("runs/resnet20_digits_teacher/last.ckpt")
    if not path.is_file():
        return None
    from vitlab.engine.checkpoint import load_eval_model

    return "cifar_resnet20 (digits teacher)", load_eval_model(path).model.eval(), 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, engine x86, median of {args.reps} runs\n")
    print("| model | input | FP32 size (MB) | int8 size (MB) | batch | FP32 (ms) | int8 (ms) | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for entry in (autoattack_resnet18(), digits_resnet20()):
        if entry is None:
            continue
        name, model, size = entry
        frozen = model.requires_grad_(False)
        calibration = zeroq_distill(frozen, (32, 3, size, size), steps=20)
        quantized = convert_int8(model, calibration)
        fp_mb, q_mb = state_bytes(model) / 1e6, state_bytes(quantized) / 1e6
        for batch in (1, 32):
            x = torch.randn(batch, 3, size, size)
            fp_ms, q_ms = latency_ms(model, x, args.reps), latency_ms(quantized, x, args.reps)
            print(f"| {name} | {size}x{size} | {fp_mb:.2f} | {q_mb:.2f} | {batch} | {fp_ms:.2f} | {q_ms:.2f} | "
                  f"{fp_ms / q_ms:.2f}x |")
    print("\n| generator | output | batch | images/s |\n|---|---|---|---|")
    for name, generator, size in (("CifarGenerator", CifarGenerator(10, 32), 32),
                                  ("ImageNetGenerator", ImageNetGenerator(1000, 224), 224)):
        z, y = torch.randn(32, 100), torch.randint(0, 10, (32,))
        with torch.no_grad():
            generator(z, y)
            t0 = time.perf_counter()
            reps = max(args.reps // 4, 3)
            for _ in range(reps):
                generator(z, y)
            seconds = (time.perf_counter() - t0) / reps
        print(f"| {name} | {size}x{size} | 32 | {32 / seconds:.1f} |")


if __name__ == "__main__":
    main()
