"""The small-scale TransZero++ plan of specs/transzero.md §6 on ``digits_zsl``, 3 seeds.

Rows, each ``recipes/transzero/digits_zsl.yaml`` with ``method.branches`` set (the same data, optimizer, λ's,
3,000 iterations, seed):

- ``transzero_pp``: AVT + VAT with the collaborative losses (the full method);
- ``global``: the global-feature compatibility baseline (mean-pooled regions -> linear -> attributes, L_ACE + L_SC +
  L_AR);
- ``avt``: the AVT sub-net alone (TransZero, AAAI'22);
- ``vat``: the VAT sub-net alone.

Each run is evaluated every 10 epochs on test_seen / test_unseen; ``results/transzero/<row>_s<seed>.json`` holds the
final-iteration metrics (CZSL ``acc``, GZSL ``U`` / ``S`` / ``H``, %) and, labelled ``best_on_test_*``, the best H
and best acc over the evaluations (the official scripts' selection on the test set, for comparison only). A row
whose file exists is skipped, so the plan resumes.

    OMP_NUM_THREADS=1 python experiments/transzero_plan.py --seeds 0 1 2 --set train.epochs=50 --set train.eval_every=5
    python experiments/tables.py transzero_digits
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "transzero" / "digits_zsl.yaml"
RESULTS = ROOT / "results" / "transzero"
ROWS = {"transzero_pp": "[avt,vat]", "global": "[global]", "avt": "[avt]", "vat": "[vat]"}


def read_evals(metrics_csv: Path) -> list[dict[str, float]]:
    """The evaluation rows of a run's metrics.csv, in step order: [{"step", "acc", "U", "S", "H"}, ...]."""
    by_step: dict[int, dict[str, float]] = {}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            if row["phase"] == "eval":
                entry = by_step.setdefault(int(row["step"]), {"step": float(row["step"])})
                entry[row["name"]] = float(row["value"])
    return [by_step[k] for k in sorted(by_step)]


def writer_command(seeds: list[int], sets: list[str], tag: str = "", rows: list[str] | None = None) -> str:
    """The command that writes every result file of the plan again (rows default to all)."""
    parts = ["python experiments/transzero_plan.py --seeds", *map(str, seeds)]
    if rows is not None and set(rows) != set(ROWS):
        parts += ["--rows", *rows]
    if tag:
        parts += ["--tag", tag]
    return " ".join(parts + [f"--set {s}" for s in sets])


def run_row(row: str, seed: int, out: Path, sets: list[str], command: str) -> dict[str, Any]:
    name = f"tz_{row}_s{seed}"
    cmd = [sys.executable, "-m", "vitlab", "train", "-c", str(RECIPE), "--set", f"name={name}", "--set",
           f"out_dir={out}", "--set", f"train.seed={seed}", "--set", f"method.branches={ROWS[row]}", "--set",
           "train.progress=false", "--overwrite"] + [x for s in sets for x in ("--set", s)]
    start = time.time()
    (out / name).mkdir(parents=True, exist_ok=True)
    with open(out / name / "plan.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    evals = read_evals(out / name / "metrics.csv")
    final = evals[-1]
    best_h = max(evals, key=lambda e: e["H"])
    return {"command": command, "row": row, "seed": seed, "branches": ROWS[row], "steps": int(final["step"]),
            "acc": final["acc"], "U": final["U"], "S": final["S"], "H": final["H"],
            "best_on_test_H": best_h["H"], "best_on_test_H_U": best_h["U"], "best_on_test_H_S": best_h["S"],
            "best_on_test_acc": max(e["acc"] for e in evals), "evaluations": len(evals),
            "wall_s": round(time.time() - start, 1), "recipe": str(RECIPE.relative_to(ROOT)), "sets": sets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", default="runs/transzero_plan")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every run")
    parser.add_argument("--tag", default="", help="a variant of the plan: results/transzero/<tag>/, runs <out>/<tag>")
    args = parser.parse_args()
    results = RESULTS / args.tag if args.tag else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) / args.tag if args.tag else Path(args.out)
    rows = None if not args.tag else args.rows
    for seed in args.seeds:
        for row in args.rows:
            path = results / f"{row}_s{seed}.json"
            if path.exists():
                continue
            result = run_row(row, seed, out, args.set, writer_command(args.seeds, args.set, args.tag, rows))
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp, path)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
