"""One markdown table of a benchmarks/gpu_check.sh run, from the JSON files it left in its output folder.

Rows: every check the script recorded (``<name>.check.json``: status, exit code, seconds, the precision asked and
the one used), with its result where one exists: the last evaluation of the training runs (rows of phase ``eval`` of
the run's metrics.csv), images/s, ratio to DeiT-S and peak memory of each model of the train-step benchmark
(``train_step.json``), items/s of each loader variant (``loader.json``). A check the script did not reach, or whose
file is missing, is a row that says so, never a silent gap.

    python benchmarks/bench_gpu_report.py runs/gpu_check
    python benchmarks/bench_gpu_report.py runs/gpu_check --out runs/gpu_check/report.md
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

# The checks gpu_check.sh runs, in its order; the loader check only where benchmarks/bench_loader.py exists.
PRECISIONS = ("16-mixed", "bf16-mixed")
MANUAL_METHODS = ("hat", "mugs", "gdfq", "clusterq")
CHECKS = ("resnet18_digits", "resnet20_digits_teacher",
          *(f"{method}_{precision}" for precision in PRECISIONS for method in MANUAL_METHODS), "train_step")
TRAIN_STEP_MODELS = ("iformer_small", "deit_small_patch16_224", "swin_tiny_patch4_window7_224")
SHOWN_METRICS = ("top1", "knn_top1", "linear_top1", "robust_top1")  # of the last evaluation, where a run has them


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def last_metrics(run_dir: Path) -> dict[str, float]:
    """The metrics of a run's last evaluation (metrics.csv rows of phase ``eval``; empty when it has none)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        evals = [row for row in csv.DictReader(handle) if row.get("phase") == "eval"]
    if not evals:
        return {}
    last_step = evals[-1]["step"]
    return {row["name"]: float(row["value"]) for row in evals if row["step"] == last_step}


def _result_of_run(out: Path, name: str) -> str:
    metrics = last_metrics(out / "runs" / name)
    shown = [key for key in SHOWN_METRICS if key in metrics] or sorted(metrics)[:3]
    return ", ".join(f"{key} {metrics[key]:.4g}" for key in shown) if shown else "—"


def rows(out: Path) -> list[str]:
    """The table's rows (header included) for the gpu_check.sh output folder `out`."""
    table = ["| check | precision | status | seconds | result |", "|---|---|---|---|---|"]
    names = list(CHECKS) + (["loader"] if (out / "loader.check.json").is_file() else [])
    for name in names:
        record = _read_json(out / f"{name}.check.json")
        if record is None:
            labels = [f"train step {model}" for model in TRAIN_STEP_MODELS] if name == "train_step" else [name]
            table += [f"| {label} | — | not run | — | no {name}.check.json |" for label in labels]
            continue
        precision = record["precision"]
        if record["precision_used"] != precision:
            reason = "no fp16 autocast on the CPU" if precision == "16-mixed" else "dry run on the CPU"
            precision += f" (ran as {record['precision_used']}: {reason})"
        status = record["status"] + ("" if record["exit"] == 0 else f" (exit {record['exit']}, {record['log']})")
        if name == "train_step":
            table += _train_step_rows(out, precision, status, record["seconds"])
            continue
        result = _loader_result(out) if name == "loader" else _result_of_run(out, name)
        table.append(f"| {name} | {precision} | {status} | {record['seconds']:.1f} | {result} |")
    if not (out / "loader.check.json").is_file():
        table.append("| loader | — | not run | — | this checkout has no benchmarks/bench_loader.py |")
    return table


def _train_step_rows(out: Path, precision: str, status: str, seconds: float) -> list[str]:
    record = _read_json(out / "train_step.json")
    by_model = {row["model"]: row for row in record["rows"]} if record else {}
    setting = (f"{record['device_name']}, batch {record['batch']} at {record['img_size']} px, amp {record['amp']}"
               if record else "")
    lines = []
    for model in TRAIN_STEP_MODELS:
        row = by_model.get(model)
        if row is None:
            lines.append(f"| train step {model} | {precision} | {status} | {seconds:.1f} | no row in train_step.json |")
            continue
        peak = "—" if row.get("peak_mib") is None else f"{row['peak_mib']:.0f} MiB"
        lines.append(f"| train step {model} | {precision} | {status} | {seconds:.1f} | {setting}: "
                     f"{row['images_per_s']:.1f} img/s, step {row['ratio_to_reference']:.2f}x DeiT-S's, "
                     f"saved for backward {row['saved_mib']:.0f} MiB, peak {peak} |")
    return lines


def _loader_result(out: Path) -> str:
    record = _read_json(out / "loader.json")
    if not record or "items_per_s" not in record:
        return "no loader.json"
    return ", ".join(f"{name} {rate:.0f} items/s" for name, rate in record["items_per_s"].items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the output folder of benchmarks/gpu_check.sh")
    parser.add_argument("--out", dest="report", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        print(f"error: {args.out}: no such folder (the --out of benchmarks/gpu_check.sh)", file=sys.stderr)
        return 2
    table = "\n".join(rows(args.out))
    print(table)
    if args.report is not None:
        args.report.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
