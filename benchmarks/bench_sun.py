"""SUN stage-2 step time / plain supervised step time, on the same backbone and batch, in the same run (issue 14).

A SUN step is what the engine runs for ``method.name: sun``: the frozen teacher's forward (no gradient) on the teacher
view, the student's forward with its global and local heads, the patch targets with background filtration, backward
and an AdamW step. The plain step is the supervised method's forward, backward and AdamW step on the same backbone.
Steps alternate, so that load on a shared machine hits both alike; the medians and their ratio are reported.

Run: python benchmarks/bench_sun.py [--steps 15] [--threads 2] [--out results/benchmarks/sun_step.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitlab.cli import main as vitlab_main
from vitlab.config import load_config
from vitlab.engine.checkpoint import atomic_write_bytes
from vitlab.methods.base import DataInfo, Progress, build_method

ROOT = Path(__file__).resolve().parents[1]
TEACHER, STUDENT = ROOT / "recipes" / "sun" / "digits_teacher.yaml", ROOT / "recipes" / "sun" / "digits_sun.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="timed steps of each kind (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="the digits plan's batch (spec §6)")
    parser.add_argument("--out", type=Path, help="also write the timings as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:  # a one-step stage-1 teacher: its weights do not change the step cost
        rc = vitlab_main(["train", "-c", str(TEACHER), "--set", f"out_dir={tmp}", "--set", "name=teacher",
                          "--set", "train.max_steps=1", "--set", "train.epochs=1", "--set", "train.progress=false",
                          "--set", "method.fewshot.episodes=10"])
        if rc != 0:
            sys.exit(rc)
        cfg = load_config(STUDENT, [f"method.teacher_ckpt={tmp}/teacher/last.ckpt"])
        info = DataInfo(num_classes=5, channels=3, img_size=cfg.data.img_size, mean=(0.5,) * 3, std=(0.5,) * 3)
        torch.manual_seed(0)
        sun = build_method(cfg, info).train()
    plain_cfg = load_config(None, [f"model.name={cfg.model.name}", "method.name=supervised",
                                   f"data.img_size={cfg.data.img_size}"])
    torch.manual_seed(0)
    plain = build_method(plain_cfg, info).train()
    optimizers = {"sun": torch.optim.AdamW(sun.param_groups(), lr=1e-4),
                  "plain": torch.optim.AdamW(plain.param_groups(), lr=1e-4)}
    generator = torch.Generator().manual_seed(0)
    size = cfg.data.img_size
    batch = {"image": torch.rand(args.batch, 3, size, size, generator=generator),
             "teacher_image": torch.rand(args.batch, 3, size, size, generator=generator),
             "label": torch.randint(0, 5, (args.batch,), generator=generator)}
    progress = Progress(step=0, epoch=0, total_steps=1, steps_per_epoch=1, values={"lr": 1e-4, "weight_decay": 0.05})
    methods = {"sun": sun, "plain": plain}

    def step(name: str) -> float:
        start = time.perf_counter()
        out = methods[name](batch, progress)
        out["loss"].backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"sun": [], "plain": []}
    for i in range(args.steps + 2):
        for name in ("plain", "sun"):
            seconds = step(name)
            if i >= 2:
                times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["sun"] / median["plain"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {cfg.model.name}, batch {args.batch} at "
          f"{size} px; median of {args.steps} alternating steps")
    print(f"plain supervised step {1e3 * median['plain']:.1f} ms, SUN stage-2 step {1e3 * median['sun']:.1f} ms: "
          f"ratio {ratio:.2f}")
    if args.out is not None:
        record = {"command": "python benchmarks/bench_sun.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "model": cfg.model.name, "batch": args.batch, "img_size": size,
                  "steps": args.steps, "plain_s": median["plain"], "sun_s": median["sun"], "ratio": ratio}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(record, indent=2).encode(), args.out)


if __name__ == "__main__":
    main()
