"""Frames scaling: time and memory per clip of DualFormer against the same network with full global attention.

For each clip length T, builds ``test_dualformer`` (local windows + pyramid global attention) and
``test_dualformer_global`` (every block attends over all tokens) for clips (3, T, H, W), and measures, in a fresh
process per point, the median forward+backward time per clip and the peak resident memory added by one
forward+backward pass. Results go to docs/benchmarks.md ("## DualFormer frames scaling").

    python benchmarks/bench_dualformer.py --frames 8 16 32 --size 64 --batch 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time


def measure(model_name: str, frames: int, size: int, batch: int, repeats: int, explicit: bool = False
            ) -> dict[str, float]:
    import timm
    import torch

    import vitlab  # noqa: F401
    from vitlab.models.profile import explicit_attention

    video = (frames, size, size)
    kwargs: dict = {"video_size": video, "num_classes": 4}
    if model_name == "test_dualformer_global":
        kwargs["window_size"] = (frames, size // 4, size // 4)  # one window = the whole stage-1 grid
    with explicit_attention() if explicit else contextlib.nullcontext():  # explicit: the attention matrices exist
        model = timm.create_model(model_name, **kwargs)
    x = torch.rand(batch, 3, *video)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model(x).sum().backward()  # warm-up
    model.zero_grad(set_to_none=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x).sum().backward()
        times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": model_name, "frames": frames, "ms_per_clip": 1e3 * statistics.median(times) / batch,
            "peak_rss_mib": peak / 1024, "extra_rss_mib": (peak - base) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--explicit-attention", action="store_true", help="explicit softmax(QK^T)V instead of SDPA")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.size, args.batch, args.repeats,
                                 args.explicit_attention)))
        return
    rows = []
    for t in args.frames:
        for name in ("test_dualformer", "test_dualformer_global"):
            out = subprocess.run([sys.executable, __file__, "--one", name, str(t), "--size", str(args.size),
                                  "--batch", str(args.batch), "--repeats", str(args.repeats)]
                                 + (["--explicit-attention"] if args.explicit_attention else []),
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| T | DualFormer ms/clip | full attention ms/clip | ratio | DualFormer memory of one pass (MiB) | "
          "full attention memory of one pass (MiB) |")
    print("|---|---|---|---|---|---|")
    for t in args.frames:
        d = next(r for r in rows if r["frames"] == t and r["model"] == "test_dualformer")
        g = next(r for r in rows if r["frames"] == t and r["model"] == "test_dualformer_global")
        print(f"| {t} | {d['ms_per_clip']:.0f} | {g['ms_per_clip']:.0f} | {g['ms_per_clip'] / d['ms_per_clip']:.2f} | "
              f"{d['extra_rss_mib']:.0f} | {g['extra_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
