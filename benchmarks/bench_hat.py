"""HAT step time / plain step time, on the same model and batch, in the same run (vitlab spec hat.md §2.2: the
official loop costs about 3.3x a plain step: one forward without gradient plus K = 3 forward/backward passes).

Both steps are what the engine runs: the plain one is the supervised method's forward + backward + AdamW step, the
HAT one is :meth:`vitlab.methods.hat.HAT.training_step` (HAT phase, K = 3). Steps alternate so that load on a shared
machine hits both alike; the medians are reported.

Run: python benchmarks/bench_hat.py [--model vit_tiny_digits|deit_tiny] [--steps 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import torch

from vitlab.config import load_config
from vitlab.engine.optim import PlainStepHelper, build_optimizer
from vitlab.methods.base import DataInfo, Progress, build_method

MODELS = {
    # the small-scale plan's tiny ViT (spec §6) on 32x32 inputs
    "vit_tiny_digits": (["model.name=vit_tiny_patch16_224", "model.kwargs.img_size=32", "model.kwargs.patch_size=4",
                         "model.kwargs.embed_dim=96", "model.kwargs.depth=4", "model.kwargs.num_heads=3",
                         "model.drop_path_rate=0.1"], 32, 64),
    # DeiT-Ti at 224 (the paper's ViT-T), a small batch for the CPU
    "deit_tiny": (["model.name=vit_tiny_patch16_224", "model.drop_path_rate=0.1"], 224, 8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="vit_tiny_digits")
    parser.add_argument("--steps", type=int, default=15, help="timed steps of each kind (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides, size, batch_size = MODELS[args.model]
    info = DataInfo(num_classes=10, channels=3, img_size=size, mean=(0.5,) * 3, std=(0.5,) * 3)
    methods = {}
    for name in ("supervised", "hat"):
        cfg = load_config(None, overrides + [f"method.name={name}", "method.label_smoothing=0.1",
                                             f"data.img_size={size}"])
        torch.manual_seed(0)
        methods[name] = build_method(cfg, info).train()
    optimizer = torch.optim.AdamW(methods["supervised"].param_groups(), lr=1e-3)
    helper = PlainStepHelper(methods["hat"].configure_optimizers(partial(build_optimizer, methods["hat"].cfg)))
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(batch_size, 3, size, size, generator=generator),
             "label": torch.randint(0, 10, (batch_size,), generator=generator)}
    progress = Progress(step=0, epoch=0, total_steps=1, steps_per_epoch=1, values={"lr": 1e-3, "weight_decay": 0.05})

    def plain_step() -> None:
        out = methods["supervised"](batch, progress)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def hat_step() -> None:
        methods["hat"].training_step(batch, progress, helper)

    times: dict[str, list[float]] = {"plain": [], "hat": []}
    for i in range(args.steps + 2):
        for name, fn in (("plain", plain_step), ("hat", hat_step)):
            t0 = time.perf_counter()
            fn()
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    plain, hat = statistics.median(times["plain"]), statistics.median(times["hat"])
    print(json.dumps({"model": args.model, "batch": batch_size, "img_size": size, "threads": args.threads,
                      "plain_step_s": round(plain, 4), "hat_step_s": round(hat, 4), "ratio": round(hat / plain, 2),
                      "steps": args.steps}))


if __name__ == "__main__":
    main()
