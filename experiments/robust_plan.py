"""The small-scale SCORE plan of specs/score.md §6 on digits: TRADES-KL against SCORE = TRADES(SE), 3 seeds.

For every method and seed it trains ``recipes/robust/<method>_digits.yaml`` (32 px, 40 epochs, lr /10 at 36 and /100
at 38), then runs the AutoAttack protocol with the ``custom`` cascade APGD-CE → APGD-T (vitlab native back end, seed
0, ε 8/255) on the whole test split, and finally prints the table of docs/robustness.md with the spec's gate: SCORE's
mean AA robust accuracy must exceed TRADES-KL's by more than the pooled seed std. Finished runs are reused.

    OMP_NUM_THREADS=1 python experiments/robust_plan.py --out runs/robust_plan            # everything (~2 h on 1 core)
    python experiments/robust_plan.py --out runs/robust_plan --table-only                 # the table of finished runs
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("trades", "score")
LABELS = {"trades": "TRADES-KL (CE + 6·KL), lr 0.1", "score": "SCORE = TRADES(SE) (SE + 6·SE, clip 0.3), lr 0.05"}


def run(method: str, seed: int, out: Path) -> None:
    name = f"{method}_s{seed}"
    run_dir = out / name
    if not (run_dir / "done").exists():
        recipe = ROOT / "recipes" / "robust" / f"{method}_digits.yaml"
        subprocess.run([sys.executable, "-m", "vitlab", "train", "-c", str(recipe),
                        "--set", f"name={name}", "--set", f"out_dir={out}", "--set", f"train.seed={seed}",
                        "--set", "train.eval_every=40", "--overwrite"], check=True)
        (run_dir / "done").touch()
    report = run_dir / "aa_custom_native.json"
    if not report.exists():
        subprocess.run([sys.executable, "-m", "vitlab", "attack", "--ckpt", str(run_dir / "last.ckpt"),
                        "--attack", "autoattack", "--version", "custom", "--attacks", "apgd-ce", "apgd-t",
                        "--backend", "native", "--seed", "0", "--out", str(report)], check=True)


def final_eval(run_dir: Path) -> dict[str, float]:
    with (run_dir / "metrics.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["phase"] == "eval"]
    last = max(int(r["step"]) for r in rows)
    return {r["name"]: float(r["value"]) for r in rows if int(r["step"]) == last}


def collect(out: Path, seeds: list[int]) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    for method in METHODS:
        for seed in seeds:
            run_dir = out / f"{method}_s{seed}"
            report = run_dir / "aa_custom_native.json"
            if not report.exists():
                continue
            aa = json.loads(report.read_text())
            metrics = final_eval(run_dir)
            results[method].append({"seed": seed, "clean": 100 * aa["clean_accuracy"],
                                    "apgd_ce": 100 * aa["per_attack"]["apgd-ce"], "aa": 100 * aa["robust_accuracy"],
                                    "pgd20": metrics.get("robust_pgd", math.nan),
                                    "attack_s": aa.get("seconds_total", math.nan)})
    return results


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| run | seeds | clean top-1 (%) | PGD-20 robust (%) | AA protocol: after APGD-CE (%) | "
             "AA protocol: APGD-CE → APGD-T (%) |", "|---|---|---|---|---|---|"]
    for method in METHODS:
        rows = results[method]
        if not rows:
            continue
        cells = []
        for key in ("clean", "pgd20", "apgd_ce", "aa"):
            mean, std = _ms([r[key] for r in rows])
            per_seed = ", ".join(f"{r[key]:.2f}" for r in rows)
            cells.append(f"{mean:.2f} ± {std:.2f} ({per_seed})")
        lines.append(f"| {LABELS[method]} | {len(rows)} | " + " | ".join(cells) + " |")
    if all(len(results[m]) >= 2 for m in METHODS):
        (s_mean, s_std), (t_mean, t_std) = _ms([r["aa"] for r in results["score"]]), \
            _ms([r["aa"] for r in results["trades"]])
        pooled = math.sqrt((s_std ** 2 + t_std ** 2) / 2)
        verdict = "passes" if s_mean - t_mean > pooled else "fails"
        lines.append("")
        lines.append(f"Gate (SCORE's mean AA robust accuracy > TRADES-KL's by more than the pooled seed std): "
                     f"SCORE − TRADES = {s_mean - t_mean:+.2f} points, pooled std {pooled:.2f} → "
                     f"the gate **{verdict}**.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/robust_plan"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table-only", action="store_true", help="print the table of the finished runs only")
    args = parser.parse_args(argv)
    if not args.table_only:
        for seed in args.seeds:
            for method in METHODS:
                run(method, seed, args.out)
    results = collect(args.out, args.seeds)
    (args.out / "summary.json").parent.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
