"""Mugs speed and memory (specs/mugs.md §6): training-step time and peak memory of Mugs (IDS + LGDS + GDS) against
GDS-only (DINO-equivalent) for the same backbone and batch, in the same run. The accuracy plan is
``experiments/mugs_accuracy.py``.

    python benchmarks/bench_mugs.py --batch 32
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from vitlab.config import load_config
from vitlab.engine.optim import build_optimizer
from vitlab.methods.base import Progress, data_info_from
from vitlab.methods.mugs import Mugs

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mugs" / "vit_tiny_digits.yaml"
GDS_ONLY = "method.loss_weights=[0,0,1]"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def step_time(overrides: list[str], batch: int, steps: int, warmup: int) -> dict[str, float]:
    """Seconds per training step (forward, backward, AdamW, EMA) on one fixed multi-crop batch; memory after it."""
    cfg = load_config(RECIPE, [f"data.batch_size={batch}", *overrides])
    datasets = Mugs.build_datasets(cfg)
    torch.manual_seed(0)
    method = Mugs(cfg, data_info_from(cfg, datasets["train"]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    method.to(device).train()
    optimizer = method.configure_optimizers(partial(build_optimizer, cfg))["main"]
    batch_items = default_collate([datasets["train"][i] for i in range(batch)])
    batch_items = {k: v.to(device) for k, v in batch_items.items()}
    progress = Progress(0, 5, 100, 10, {"lr": 1e-4, "weight_decay": 0.04, "teacher_temp": 0.05,
                                        "teacher_momentum": 0.99})
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = method(batch_items, progress)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        method.on_optimizer_step(progress)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in method.student.parameters())
    # Peak memory: CUDA's allocator peak on a GPU; on the CPU the process's peak RSS (cumulative over the run, so the
    # second configuration's figure includes the first's) and, exactly, the bytes of weights, buffers and AdamW state.
    memory = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mib()
    state = [*method.parameters(), *method.buffers(),
             *[v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]]
    state_mib = sum(t.numel() * t.element_size() for t in state) / 2**20
    return {"step_s": statistics.median(times), "step_s_min": min(times), "student_params": params,
            "peak_memory_mib": memory, "state_mib": state_mib, "device": str(device)}


def run_speed(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    extra = list(args.set)
    results = {"gds_only": step_time([GDS_ONLY, *extra], args.batch, args.steps, args.warmup),
               "mugs": step_time(extra, args.batch, args.steps, args.warmup)}
    results["mugs_over_gds_time"] = results["mugs"]["step_s"] / results["gds_only"]["step_s"]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides")
    args = parser.parse_args(argv)
    print(json.dumps(run_speed(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
