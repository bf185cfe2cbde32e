"""Training-step time of vitlab's iformer_small against timm's DeiT-S and Swin-T, same batch, same process (issue 18).

A step is what a supervised run does per batch: forward, cross-entropy, backward, an AdamW step and zeroing the
gradients. The models take turns step by step (one step of each per round), so that load from other processes hits
every model alike; the report gives each model's median step time, images/s, and its paired ratio to DeiT-S (the
median over rounds of its step time / DeiT-S's step time in the same round).

Memory, per model (``--memory``):
- CPU: each model in a fresh interpreter runs one warm-up step, then the growth of the resident-set high-water mark
  over one more step (activations, gradients, temporaries; weights and AdamW state are already resident);
- CUDA: each model in a fresh interpreter, the allocator's peak over one step after a warm-up step
  (torch.cuda.max_memory_allocated: weights, AdamW state, activations and gradients);
- both: the bytes of the tensors autograd saves for backward in one forward (``saved_mib``, distinct storages, the
  parameters left out), an exact, noise-free count of the activation memory a training step holds; under the run's
  ``--amp``, and also in full precision (``saved_mib_fp32``) and under bf16 autocast (``saved_mib_bf16``), whatever
  ``--amp`` is, so that a CPU run predicts the activation memory of a bf16 GPU run.

    python benchmarks/bench_train_step.py --threads 2 --batch-size 16 --rounds 5 \
        --out results/benchmarks/iformer_train_step.json
    python benchmarks/bench_train_step.py --device cuda --amp bf16 --batch-size 128 --out <dir>/train_step.json
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vitlab.models  # noqa: F401  (registers iformer_small in timm's registry)
from vitlab.engine.checkpoint import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "deit_small_patch16_224"
MODELS = ("iformer_small", REFERENCE, "swin_tiny_patch4_window7_224")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
NUM_CLASSES = 1000


class TrainStep:
    """One model with its AdamW optimizer (and, for fp16 on CUDA, a gradient scaler) and a fixed random batch."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        self.name = name
        self.device = device
        self.model: nn.Module = timm.create_model(name, num_classes=NUM_CLASSES).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)
        self.forward = torch.compile(self.model) if args.compile else self.model
        self.amp_dtype = AMP_DTYPES[args.amp]
        fp16_cuda = self.amp_dtype is torch.float16 and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if fp16_cuda else None  # bf16 needs no loss scaling
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator).to(device)
        self.labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=generator).to(device)

    def autocast(self, dtype: torch.dtype | None | str = "run") -> contextlib.AbstractContextManager[Any]:
        """Autocast to the run's dtype (``--amp``), or to ``dtype`` (None: full precision)."""
        dtype = self.amp_dtype if dtype == "run" else dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)  # type: ignore[arg-type]

    def __call__(self) -> None:
        """Forward, cross-entropy, backward, AdamW step, gradients to None."""
        with self.autocast():
            loss = F.cross_entropy(self.forward(self.images), self.labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def saved_tensor_mib(self, dtype: torch.dtype | None | str = "run") -> float:
        """MiB of the distinct storages autograd saves for backward in one forward, the parameters left out; under
        the run's autocast dtype, or under ``dtype`` (None: full precision)."""
        parameters = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor: Tensor) -> Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), self.autocast(dtype):
            self.model(self.images)  # the graph is dropped at once: only the sizes are kept
        return sum(saved.values()) / 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: TrainStep) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one training step."""
    synchronize(step.device)
    start, start_cpu = time.perf_counter(), time.process_time()
    step()
    synchronize(step.device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_memory(args: argparse.Namespace) -> dict[str, float]:
    """Child process: peak memory (MiB) of one training step of ``args.measure_memory_of`` after a warm-up step."""
    device = torch.device(args.device)
    step = TrainStep(args.measure_memory_of, args, device)
    step()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        return {"peak_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    Path("/proc/self/clear_refs").write_text("5")  # reset the resident-set high-water mark (Linux)
    base = _status_kib("VmRSS")
    step()
    return {"peak_mib": (_status_kib("VmHWM") - base) / 1024}


def child_memory(name: str, args: argparse.Namespace) -> float:
    """Peak memory (MiB) of one training step of ``name``, measured in a fresh interpreter."""
    command = [sys.executable, __file__, "--measure-memory-of", name, "--device", args.device, "--threads",
               str(args.threads), "--batch-size", str(args.batch_size), "--img-size", str(args.img_size), "--amp",
               args.amp] + (["--compile"] if args.compile else [])
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of {name} failed:\n{result.stderr[-2000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"])


def _git_commit() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def paired_ratio(times: dict[str, list[float]], name: str) -> float:
    """Median over rounds of name's step time / the reference's step time in the same round."""
    return statistics.median(a / b for a, b in zip(times[name], times[REFERENCE], strict=True))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time the alternating rounds and measure memory; the result record."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)
    names = list(dict.fromkeys([*args.models, REFERENCE]))
    steps = {name: TrainStep(name, args, device) for name in names}
    saved = {name: steps[name].saved_tensor_mib() for name in names}
    saved_fp32 = {name: steps[name].saved_tensor_mib(None) for name in names}
    saved_bf16 = {name: steps[name].saved_tensor_mib(torch.bfloat16) for name in names}
    load_before = os.getloadavg()
    for _ in range(args.warmup):
        for name in names:
            steps[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            wall_s, cpu_s = time_step(steps[name])
            wall[name].append(wall_s)
            cpu[name].append(cpu_s)
    load_after = os.getloadavg()
    del steps
    memory = {name: child_memory(name, args) if args.memory else None for name in names}
    rows = []
    for name in names:
        median = statistics.median(wall[name])
        rows.append({"model": name, "step_s": median, "min_s": min(wall[name]), "max_s": max(wall[name]),
                     "images_per_s": args.batch_size / median, "cpu_s": statistics.median(cpu[name]),
                     "ratio_to_reference": paired_ratio(wall, name), "saved_mib": saved[name],
                     "saved_mib_fp32": saved_fp32[name], "saved_mib_bf16": saved_bf16[name],
                     "peak_mib": memory[name]})
    return {"command": "python benchmarks/bench_train_step.py " + " ".join(sys.argv[1:]), "commit": _git_commit(),
            "torch": torch.__version__, "timm": timm.__version__, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "batch": args.batch_size,
            "img_size": args.img_size, "amp": args.amp, "compile": args.compile,
            "matmul_precision": torch.get_float32_matmul_precision(), "rounds": args.rounds,
            "warmup": args.warmup, "reference": REFERENCE, "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in load_after],
            "peak_memory_kind": "cuda max_memory_allocated over a step" if device.type == "cuda"
            else "growth of the RSS high-water mark over a step", "rows": rows}


def format_record(record: dict[str, Any]) -> Iterator[str]:
    yield (f"torch {record['torch']}, timm {record['timm']}, {record['device_name']}, {record['threads']} threads, "
           f"batch {record['batch']} at {record['img_size']} px, amp {record['amp']}, compile {record['compile']}, "
           f"median of {record['rounds']} alternating rounds; load average {record['load_average_before'][0]} -> "
           f"{record['load_average_after'][0]} on {record['cpu_count']} cores; commit {record['commit']}")
    for row in record["rows"]:
        peak = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        yield (f"{row['model']:<32} step {row['step_s']:.3f} s ({row['min_s']:.3f}-{row['max_s']:.3f}), "
               f"{row['images_per_s']:.1f} img/s, {row['ratio_to_reference']:.2f}x DeiT-S's step, "
               f"saved {row['saved_mib']:.0f} MiB (fp32 {row['saved_mib_fp32']:.0f}, bf16 autocast "
               f"{row['saved_mib_bf16']:.0f}), peak {peak} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"timm names ({REFERENCE} is always run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 128 on CUDA")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; every model runs one step per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default="none", help="autocast dtype")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--matmul-precision", choices=("highest", "high", "medium"), default=None,
                        help="torch.set_float32_matmul_precision (default: leave torch's)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    parser.add_argument("--out", type=Path, default=None, help="write the record as JSON here (atomically)")
    parser.add_argument("--measure-memory-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = 128 if args.device.startswith("cuda") else 16
    torch.set_num_threads(args.threads)
    if args.measure_memory_of:
        print(json.dumps(measure_memory(args)))
        return
    record = run(args)
    for line in format_record(record):
        print(line)
    if args.out is not None:
        atomic_write_bytes((json.dumps(record, indent=2) + "\n").encode(), args.out)


if __name__ == "__main__":
    main()
