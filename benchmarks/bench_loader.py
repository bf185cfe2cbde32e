"""Items per second of the Mugs multi-crop input pipeline alone (no model), on the bundled glyphs of
recipes/mugs/vit_tiny_glyphs.yaml (2 × 16-px global crops for the teacher, 2 for the student, 4 × 8-px local crops):

- ``pil, 0 workers``: ``method.crops.backend: pil``, every item cropped by PIL in the main process;
- ``pil, 2 workers``: the same items from 2 persistent loader workers;
- ``batch``: ``method.crops.backend: batch``, plain uint8 images from the loader (0 workers) and the crops made on
  each batch by :class:`vitlab.data.batch_aug.BatchMultiCrop` on the CPU (a GPU run makes them on the GPU).

Each round reads ``--items`` images through each variant in turn (alternating, so that load on a shared machine hits
all alike) after one warm-up round; the medians over rounds and the ratio batched / PIL with 0 workers are reported.

    OMP_NUM_THREADS=2 python benchmarks/bench_loader.py --threads 2 --out results/benchmarks/loader.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from vitlab.config import load_config
from vitlab.data.batch_aug import BatchMultiCrop
from vitlab.data.loader import build_loader
from vitlab.engine.checkpoint import atomic_write_bytes
from vitlab.methods.mugs import Mugs, crop_sizes

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "mugs" / "vit_tiny_glyphs.yaml"
VARIANTS = {"pil0": "pil, 0 workers", "pil2": "pil, 2 workers", "batch": "batch (crops on the batch)"}


def _consume(loader: Any, crops: BatchMultiCrop | None, generator: torch.Generator) -> int:
    """Read every batch of ``loader`` (making the crops for the batched path); returns the number of items."""
    items = 0
    for batch in loader:
        if crops is not None:
            batch = crops(batch["image"], generator)
        items += int(batch["teacher_globals"].shape[0])
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the main process")
    parser.add_argument("--items", type=int, default=1280, help="images per round and variant (1,280: one epoch)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    loaders: dict[str, Callable[[], int]] = {}
    for backend in ("pil", "batch"):
        cfg = load_config(RECIPE, [f"method.crops.backend={backend}"])
        train = Mugs.build_datasets(cfg)["train"]
        subset = Subset(train, range(min(args.items, len(train))))  # type: ignore[arg-type]
        batch_size = cfg.data.batch_size
        if backend == "pil":
            for workers in (0, 2):
                loader = build_loader(subset, workers, batch_size=batch_size, shuffle=True,
                                      generator=torch.Generator().manual_seed(0))
                loaders[f"pil{workers}"] = (lambda ld=loader: _consume(ld, None, torch.Generator()))
        else:
            c = Mugs.method_config(cfg).crops
            global_size, local_size = crop_sizes(cfg)
            crops = BatchMultiCrop(global_size, local_size, c.local_number, c.global_scale, c.local_scale,
                                   c.strong_prob, c.hflip, cfg.data.channels, train.mean, train.std,  # type: ignore
                                   c.rand_augment, c.random_erasing)
            loader = build_loader(subset, 0, batch_size=batch_size, shuffle=True,
                                  generator=torch.Generator().manual_seed(0))
            generator = torch.Generator().manual_seed(0)
            loaders["batch"] = (lambda ld=loader, cr=crops, gen=generator: _consume(ld, cr, gen))

    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds + 1):
        for name in VARIANTS:
            start = time.perf_counter()
            items = loaders[name]()
            seconds = time.perf_counter() - start
            if round_ > 0:  # round 0 warms up (worker start, first-call costs)
                rates[name].append(items / seconds)
    median = {name: statistics.median(values) for name, values in rates.items()}
    ratio = median["batch"] / median["pil0"]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.items} glyphs per round, batch "
          f"{cfg.data.batch_size}; median of {args.rounds} alternating rounds")
    for name, label in VARIANTS.items():
        print(f"{label}: {median[name]:.0f} items/s")
    print(f"batched / PIL with 0 workers: {ratio:.2f}x; batched / PIL with 2 workers: "
          f"{median['batch'] / median['pil2']:.2f}x")
    if args.out is not None:
        record = {"command": "python benchmarks/bench_loader.py " + " ".join(sys.argv[1:]),
                  "torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count(),
                  "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  "recipe": str(RECIPE.relative_to(ROOT)), "items": args.items, "rounds": args.rounds,
                  "batch_size": cfg.data.batch_size, "device": "cpu",
                  "load_average": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
                  "items_per_s": median, "rounds_items_per_s": rates, "ratio_batch_to_pil0": ratio,
                  "ratio_batch_to_pil2": median["batch"] / median["pil2"]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(record, indent=2).encode(), args.out)  # a tmp file, then os.replace


if __name__ == "__main__":
    main()
