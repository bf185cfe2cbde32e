"""Forward throughput and peak memory of iformer_small against timm baselines and the official iFormer code.

Measures, in one run and interleaved round by round (so that load from other processes hits every model alike):
- images/s of vitlab's iformer_small, timm's deit_small_patch16_224 and swin_tiny_patch4_window7_224, and, when its
  file is given, the official iFormer-S (sail-sg/iFormer, models/inception_transformer.py) loaded with the same
  weights through `checkpoint_filter_fn` (outputs checked equal to 1e-5 first);
- a large sgemm (n x n, one multiply-add = one FLOP) as the machine's matrix-multiply peak;
- achieved FLOP/s = fvcore FLOPs (explicit attention) x images/s, as a fraction of that peak;
- peak memory of one forward, each model in a fresh subprocess (CPU: resident-set high-water mark; CUDA: the
  allocator's peak).

    python benchmarks/bench_iformer.py --batch-size 32 --repeats 7 --threads 2 \
        --official /tmp/official_iformer/inception_transformer.py

The official file is never part of vitlab: fetch it yourself and point --official at it. Its timm 0.5 imports are
patched in memory for timm 1.0, and its models are not registered in timm's registry. The output check runs in full
float32 (TF32 off for cuDNN and matrix products, restored afterwards), so it holds on CUDA as on CPU; the timed
rounds keep torch's defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import timm
import torch
from torch import nn

import vitlab  # noqa: F401  (registers the vitlab models)
from vitlab.models.iformer import checkpoint_filter_fn
from vitlab.models.profile import count_flops, explicit_attention

BASELINES = ("deit_small_patch16_224", "swin_tiny_patch4_window7_224")
OURS = "iformer_small"
OFFICIAL = "official iformer_small"

# timm 0.5 import lines of the official file -> timm 1.0 public modules; @register_model becomes a no-op so that the
# official entry points do not replace vitlab's in timm's registry
_OFFICIAL_IMPORT_PATCHES = {
    "from timm.models.helpers import build_model_with_cfg, named_apply, adapt_input_conv": "",
    "from timm.models.layers import PatchEmbed, Mlp, DropPath, trunc_normal_, lecun_normal_": (
        "from timm.layers import PatchEmbed, Mlp, DropPath, trunc_normal_, lecun_normal_"
    ),
    "from timm.models.registry import register_model": "register_model = lambda fn: fn",
    "from timm.models.layers.helpers import to_2tuple": "from timm.layers import to_2tuple",
}


def load_official_module(path: Path) -> types.ModuleType:
    """The official models/inception_transformer.py as a module, imports patched for timm 1.0."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: official iFormer model file not found; fetch models/inception_transformer.py from "
            "github.com/sail-sg/iFormer and pass its path with --official"
        )
    source = path.read_text()
    for old, new in _OFFICIAL_IMPORT_PATCHES.items():
        source = source.replace(old, new)
    module = types.ModuleType("official_inception_transformer")
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def build_model(name: str, official_path: Path | None, seed: int = 0) -> nn.Module:
    """A model in eval mode; the official one with the same random weights as vitlab's (seeded)."""
    torch.manual_seed(seed)
    if name == OFFICIAL:
        assert official_path is not None
        return load_official_module(official_path).iformer_small().eval()
    return timm.create_model(name, pretrained=False).eval()


def perturbed_official_pair(official_path: Path, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(official, vitlab) iFormer-S with identical weights, LayerScale and BatchNorm statistics randomised so that
    every path contributes to the output (at the 1e-6 LayerScale init, stages 3-4 barely would)."""
    official = build_model(OFFICIAL, official_path, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, tensor in official.state_dict().items():
            if key.endswith(("layer_scale_1", "layer_scale_2", "running_var")):
                tensor.copy_(0.5 + 0.5 * torch.rand(tensor.shape, generator=generator))
            elif key.endswith("running_mean"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
    ours = timm.create_model(OURS).eval()
    ours.load_state_dict(checkpoint_filter_fn(official.state_dict(), ours))
    return official, ours


@contextlib.contextmanager
def full_fp32_precision() -> Iterator[None]:
    """Full float32 arithmetic inside (no TF32 in cuDNN convolutions or matrix products, 'highest' matmul
    precision), restoring the previous settings on exit. On CUDA the defaults let convolutions use TF32 (10-bit
    mantissa), whose rounding alone exceeds the 1e-5 tolerance of the official-vs-vitlab output check."""
    previous = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                torch.get_float32_matmul_precision())  # fmt: skip
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous[:2]
        torch.set_float32_matmul_precision(previous[2])


def output_difference(official: nn.Module, ours: nn.Module, x: torch.Tensor) -> float:
    """max |official(x) - ours(x)| in full float32 precision (the check's tolerance, 1e-5, assumes it)."""
    with full_fp32_precision(), torch.inference_mode():
        return (official.to(x.device)(x) - ours.to(x.device)(x)).abs().max().item()


def fvcore_flops(name: str, img_size: int, official_path: Path | None) -> float:
    """fvcore FLOPs (one multiply-add = one FLOP) of one image, with explicit attention so fvcore sees it."""
    with explicit_attention():  # the official model has no per-module switch: build it explicit
        model = build_model(name, official_path)
    return float(count_flops(model, (3, img_size, img_size)))


def time_once(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call. On a shared machine the CPU time is the steadier
    measure: it leaves out the time other processes hold the cores (it does count OpenMP spin-waiting)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu


def peak_memory_subprocess(name: str, args: argparse.Namespace) -> float:
    """Peak memory (MiB) of one forward of `name`, measured in a fresh interpreter."""
    command = [
        sys.executable,
        __file__,
        "--measure-memory-of",
        name,
        "--batch-size",
        str(args.batch_size),
        "--img-size",
        str(args.img_size),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]
    if args.official:
        command += ["--official", str(args.official)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"])


def _read_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_memory(name: str, args: argparse.Namespace) -> None:
    """Child process: print {"peak_mib": ...} for one inference forward."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(name, args.official).to(device)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.inference_mode():
            model(x)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        try:  # reset the resident-set high-water mark (Linux), so construction does not count
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        base = _read_status_kib("VmRSS")
        with torch.inference_mode():
            model(x)
        peak = (_read_status_kib("VmHWM") - base) / 1024
    print(json.dumps({"peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds; every model runs once per round")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gemm-size", type=int, default=4096, help="n of the n x n x n sgemm peak")
    parser.add_argument("--official", type=Path, default=None, help="path of the official inception_transformer.py")
    parser.add_argument("--no-baselines", action="store_true", help="skip deit/swin")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--measure-memory-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory_of:
        measure_memory(args.measure_memory_of, args)
        return

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [OURS] + ([OFFICIAL] if args.official else []) + ([] if args.no_baselines else list(BASELINES))
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)

    if args.official:
        official, ours = perturbed_official_pair(args.official)
        diff = output_difference(official, ours, x)
        status = "OK" if diff <= 1e-5 else "FAILED"
        print(
            f"output check, official vs vitlab iFormer-S, same weights, batch {args.batch_size}, full fp32 (no "
            f"TF32): max |diff| = {diff:.2e} ({status}, tolerance 1e-5)"
        )
        del official, ours

    flops = {name: fvcore_flops(name, args.img_size, args.official) for name in names}
    models = {name: build_model(name, args.official).to(device) for name in names}
    a = torch.randn(args.gemm_size, args.gemm_size, device=device)
    b = torch.randn(args.gemm_size, args.gemm_size, device=device)

    wall: dict[str, list[float]] = {name: [] for name in names + ["sgemm"]}
    cpu: dict[str, list[float]] = {name: [] for name in names + ["sgemm"]}
    load_before = os.getloadavg()
    with torch.inference_mode():
        for name in names:  # warm-up
            models[name](x)
        a @ b
        for _ in range(args.repeats):
            for name in names + ["sgemm"]:
                model = models.get(name)
                call = (lambda: a @ b) if model is None else (lambda: model(x))  # noqa: B023 (called at once)
                wall_s, cpu_s = time_once(call, device)
                wall[name].append(wall_s)
                cpu[name].append(cpu_s)

    gemm_macs = args.gemm_size**3
    peak = statistics.median(gemm_macs / t for t in wall["sgemm"])
    best_peak = max(gemm_macs / t for t in wall["sgemm"])
    memory = {name: float("nan") for name in names}
    if not args.no_memory:
        memory = {name: peak_memory_subprocess(name, args) for name in names}

    print(
        f"\ntorch {torch.__version__}, timm {timm.__version__}, device {device}, threads {args.threads}, "
        f"batch {args.batch_size}, {args.img_size}x{args.img_size}, {args.repeats} rounds; load average before "
        f"{load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)"
    )
    print(
        f"sgemm {args.gemm_size}^3 peak: median {peak / 1e9:.1f} GFLOP/s, best {best_peak / 1e9:.1f} "
        "(one multiply-add = one FLOP)\n"
    )
    print(
        "| model | GFLOPs/img (fvcore) | images/s (median) | min-max images/s | throughput vs vitlab iformer_small "
        "(paired median) | achieved GFLOP/s | fraction of sgemm peak | CPU s / batch (median) | vs vitlab in CPU "
        "time | peak memory (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rate = args.batch_size / statistics.median(wall[name])
        paired = statistics.median(ours / other for ours, other in zip(wall[OURS], wall[name]))
        paired_cpu = statistics.median(ours / other for ours, other in zip(cpu[OURS], cpu[name]))
        achieved = flops[name] * rate
        print(
            f"| {name} | {flops[name] / 1e9:.4f} | {rate:.2f} | {args.batch_size / max(wall[name]):.2f}-"
            f"{args.batch_size / min(wall[name]):.2f} | {paired:.2f}x | {achieved / 1e9:.1f} | {achieved / peak:.0%} | "
            f"{statistics.median(cpu[name]):.2f} | {paired_cpu:.2f}x | {memory[name]:.0f} |"
        )
    if args.official:
        ratio = statistics.median(off / ours for off, ours in zip(wall[OFFICIAL], wall[OURS]))
        ratio_cpu = statistics.median(off / ours for off, ours in zip(cpu[OFFICIAL], cpu[OURS]))
        print(
            f"\nvitlab iformer_small: {ratio:.2f}x the official forward throughput (median of per-round wall-clock "
            f"ratios), {ratio_cpu:.2f}x in CPU time"
        )


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    main()
