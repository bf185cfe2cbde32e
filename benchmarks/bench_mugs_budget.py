"""Does the Mugs glyphs plan at 300 epochs fit a 180-minute session? Seconds per epoch of Mugs and of the GDS-only row
(recipes/mugs/vit_tiny_glyphs.yaml, ``method.loss_weights=[0,0,1]``; experiments/mugs_accuracy.py runs both) with the
batched crops (``method.crops.backend: batch``), the time of one evaluation (novel-class k-NN alone, and k-NN + the
linear probe as the engine runs it every ``train.eval_every`` epochs), extrapolated to 300 epochs × 3 seeds × 2 rows:
serial, and two processes at a time (one per core, each pair a Mugs and a GDS-only run).

Each run is the engine's own (``setup`` and ``train_one_epoch``: loader, crops on the batch, step, EMA); the epoch time
is the median of the epochs after the first (the first pays first-call costs), or the first when there is one.

    OMP_NUM_THREADS=1 python benchmarks/bench_mugs_budget.py --threads 1 --epochs 2 \\
        --out results/benchmarks/mugs_glyphs_budget.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vitlab.config import load_config
from vitlab.engine.checkpoint import atomic_write_bytes
from vitlab.engine.trainer import evaluate, setup, train_one_epoch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "mugs" / "vit_tiny_glyphs.yaml"
ROWS = {"mugs": [], "gds_only": ["method.loss_weights=[0,0,1]"]}
PLAN_EPOCHS, PLAN_SEEDS, SESSION_MIN = 300, 3, 180.0


def measure(row: str, overrides: list[str], epochs: int, out_dir: str) -> dict[str, Any]:
    """Epoch seconds (each epoch) and evaluation seconds (k-NN alone; k-NN + probe) of one row."""
    cfg = load_config(RECIPE, [*overrides, "method.crops.backend=batch", f"train.epochs={epochs}",
                               f"out_dir={out_dir}", f"name={row}", "train.progress=false"])
    run = setup(cfg, None, overwrite=True)
    run.method.train()
    epoch_s = []
    for epoch in range(epochs):
        start = time.perf_counter()
        train_one_epoch(run, epoch, 0)
        epoch_s.append(time.perf_counter() - start)
    method: Any = run.method
    start = time.perf_counter()
    metrics = evaluate(run, epochs - 1)  # what the engine runs every train.eval_every epochs: k-NN and the probe
    eval_s = time.perf_counter() - start
    probe_on = method.mcfg.eval
    method.mcfg.eval = dataclasses.replace(probe_on, probe=False)
    method.eval()
    start = time.perf_counter()
    with torch.no_grad():
        method.evaluate(run.eval_loaders, run.fabric)
    knn_s = time.perf_counter() - start
    method.mcfg.eval = probe_on
    run.logger.close()
    steady = epoch_s[1:] or epoch_s
    return {"epoch_s": epoch_s, "epoch_s_median": statistics.median(steady), "eval_s": eval_s, "knn_s": knn_s,
            "knn_top1_after": float(metrics.get("knn_top1", float("nan"))), "steps_per_epoch": run.steps_per_epoch,
            "eval_every": cfg.train.eval_every}


def plan_minutes(row: dict[str, Any]) -> float:
    """One 300-epoch run: the epochs and an evaluation every ``eval_every`` epochs (the last one included)."""
    evaluations = math.ceil(PLAN_EPOCHS / row["eval_every"])
    return (PLAN_EPOCHS * row["epoch_s_median"] + evaluations * row["eval_s"]) / 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: two runs share the 2 cores)")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs per row")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row, overrides in ROWS.items():
            rows[row] = measure(row, overrides, args.epochs, tmp)
            print(row, {k: v for k, v in rows[row].items()}, flush=True)
    minutes = {row: plan_minutes(r) for row, r in rows.items()}
    serial = PLAN_SEEDS * sum(minutes.values())
    paired = PLAN_SEEDS * max(minutes.values())  # 3 rounds of (Mugs seed s, GDS-only seed s) side by side
    print(f"torch {torch.__version__}, {args.threads} thread(s); one 300-epoch run: Mugs {minutes['mugs']:.0f} min, "
          f"GDS-only {minutes['gds_only']:.0f} min; the plan: {serial:.0f} min serial, {paired:.0f} min two at a time "
          f"(session {SESSION_MIN:.0f} min)")
    if args.out is not None:
        record = {"command": "python benchmarks/bench_mugs_budget.py " + " ".join(sys.argv[1:]),
                  "torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count(),
                  "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  "recipe": str(RECIPE.relative_to(ROOT)), "crops_backend": "batch", "epochs_measured": args.epochs,
                  "load_average": [round(load_before[0], 1), round(os.getloadavg()[0], 1)], "rows": rows,
                  "plan": {"epochs": PLAN_EPOCHS, "seeds": PLAN_SEEDS, "rows": list(ROWS),
                           "run_minutes": minutes, "serial_minutes": serial, "two_at_a_time_minutes": paired,
                           "session_minutes": SESSION_MIN, "fits_serial": serial <= SESSION_MIN,
                           "fits_two_at_a_time": paired <= SESSION_MIN}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(record, indent=2).encode(), args.out)


if __name__ == "__main__":
    main()
