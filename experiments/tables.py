"""Print a measured table of docs/ from its result files under results/<method>/ (no training, no measuring).

Every measured table in docs/ names the command that prints it, ``python experiments/tables.py NAME``, and
tests/experiments/test_docs_tables.py checks that the docs hold exactly this output, so a table cannot drift from its
result files. Each table also names the command that writes its result files again.

    python experiments/tables.py --list
    python experiments/tables.py iformer_sizes
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"

# Paper / official figures that the measured rows are compared with (facts of ../shared/specs/iformer.md §2 and §6,
# not measurements of this code): parameters, GFLOPs and ImageNet-1K top-1.
IFORMER_SPEC: dict[str, tuple[str, str, str]] = {
    "iformer_small": ("19,866,344", "4.8485", "83.4"),
    "iformer_base": ("47,866,216", "9.3784", "84.6"),
    "iformer_large": ("86,637,096", "14.0469", "84.8"),
    "iformer_small_384": ("20,899,944", "16.098", "84.6"),
    "iformer_base_384": ("48,936,296", "30.552", "85.7"),
    "iformer_large_384": ("87,743,656", "45.335", "85.8"),
    "test_iformer": ("1,173,482", "—", "—"),
}
IFORMER_LABELS = {"test_iformer": "`test_iformer` (32×32, 10 classes)"}

# ../shared/specs/dualformer.md §2: backbone parameters and GFLOPs per 32x224x224 view of the official backbones
DUALFORMER_SPEC: dict[str, tuple[str, str, str]] = {
    "dualformer_tiny": ("DualFormer-T", "21,767,360", "60.09"),
    "dualformer_small": ("DualFormer-S", "48,908,064", "158.69"),
    "dualformer_base": ("DualFormer-B", "86,837,632", "267.97"),
}


def _gflops(flops: float) -> str:
    g = flops / 1e9
    return f"{g:.4f}" if g >= 1 else f"{g:.3g}"


def iformer_sizes(results: list[dict[str, Any]]) -> str:
    rows = ["| model | params | spec params | GFLOPs | spec GFLOPs | ImageNet-1K top-1 (paper / official logs) |",
            "|---|---|---|---|---|---|"]
    for row in results[0]["rows"]:
        spec_params, spec_gflops, top1 = IFORMER_SPEC[row["model"]]
        label = IFORMER_LABELS.get(row["model"], f"`{row['model']}`")
        rows.append(f"| {label} | {row['params']:,} | {spec_params} | {_gflops(row['flops'])} | {spec_gflops} | "
                    f"{top1} |")
    return "\n".join(rows)


def dualformer_sizes(results: list[dict[str, Any]]) -> str:
    rows = ["| model | backbone params | spec | head (400 cl.) | GFLOPs/view | spec | 4-view total |",
            "|---|---|---|---|---|---|---|"]
    for row in results[0]["rows"]:
        label, spec_params, spec_gflops = DUALFORMER_SPEC[row["model"]]
        view = row["backbone_flops_per_view"] / 1e9
        rows.append(f"| {label} | {row['backbone_params']:,} | {spec_params} | {row['head_params']:,} | {view:.3f} | "
                    f"{spec_gflops} | {4 * view:.1f} |")
    return "\n".join(rows)


def ar_cam_ink(results: list[dict[str, Any]]) -> str:
    rows = ["| classifier (digits, trained by `experiments/ar_lens.py`) | epochs | test top-1 | grid | "
            "CAM mass on ink | uniform map | images CAM > uniform | head IoU (nearest / bilinear) | all-ones IoU | "
            "threshold IoU (τ) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cam, seg = r["cam_ink"], r["ink_segmentation"]
        size = r.get("model_kwargs", {}).get("img_size")
        name = f"`{r['model']}`" + (f" at {size} px" if size else "")
        rows.append(f"| {name} | {r['epochs']} | {r['test_top1']:.2f} % | {r['grid'][0]}x{r['grid'][1]} | "
                    f"{cam['cam_share']:.4f} | {cam['uniform_share']:.4f} | "
                    f"{100 * cam['images_cam_above_uniform']:.1f} % | "
                    f"{seg['iou_head_nearest']:.3f} / {seg['iou_head_bilinear']:.3f} | {seg['iou_all_ones']:.3f} | "
                    f"{seg['iou_threshold']:.3f} ({seg['threshold']}) |")
    return "\n".join(rows)


def demo_times(results: list[dict[str, Any]]) -> str:
    """Per-section wall and CPU seconds of the `vitlab demo` runs of experiments/demo_times.py."""
    r = results[0]
    rows = ["| section | status | wall (s) | CPU (s) | process (threads) | load average at the process's end |",
            "|---|---|---|---|---|---|"]
    total_wall = total_cpu = 0.0
    for k, run in enumerate(r["runs"]):
        load = ", ".join(f"{v:.1f}" for v in run["load_average_at_end"])
        for s in run["sections"]:
            total_wall, total_cpu = total_wall + s["seconds"], total_cpu + (s["cpu_seconds"] or 0.0)
            rows.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s['cpu_seconds']:.0f} | "
                        f"{k + 1} of {r['groups']} ({run['threads']}) | {load} |")
    rows.append(f"| sum | | {total_wall:.0f} | {total_cpu:.0f} | | |")
    return "\n".join(rows)


def demo_fresh(results: list[dict[str, Any]]) -> str:
    """Per-section wall and CPU seconds of one `make demo` on a fresh clone (its report.json), and the whole command."""
    r = results[0]
    rows = [f"| section ({r['threads']} threads, {r['cpu_count']} cores) | status | wall (s) | CPU (s) |",
            "|---|---|---|---|"]
    rows += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['cpu_seconds']:.0f} |" for s in r["sections"]]
    sections = r["sections"]
    wall, cpu = sum(s["seconds"] for s in sections), sum(s["cpu_seconds"] for s in sections)
    ok = sum(s["status"] == "ok" for s in sections)
    rows.append(f"| sections | {ok} of {len(sections)} ok | {wall:.1f} | {cpu:.0f} |")
    rows += ["", f"`make demo` in all (the browser check included): {r['make_demo_wall_seconds']} s at commit "
             f"{r['commit']}; load average at the end {', '.join(map(str, r['load_average_at_end']))}. Browser check: "
             f"`{r['browser_check']}`"]
    return "\n".join(rows)


def episodes_speed(results: list[dict[str, Any]]) -> str:
    r = results[0]
    names = {"cosine": "cosine prototypes (Meta-Baseline)", "euclidean": "Euclidean prototypes",
             "logistic": "logistic regression on the support set"}
    rows = [f"| part ({r['episodes']} episodes of {r['ways']}-way {r['shots']}-shot, {r['queries']} queries; "
            f"torch {r['torch']}, {r['threads']} threads, median of {r['reps']}) | seconds |", "|---|---|",
            f"| sampling only | {r['sampling_s']:.3f} |"]
    rows += [f"| {names.get(h, h)}, sampling + scoring | {s:.3f} |" for h, s in r["heads_s"].items()]
    return "\n".join(rows)


def sun_step(results: list[dict[str, Any]]) -> str:
    r = results[0]
    return "\n".join([f"| step (`{r['model']}`, batch {r['batch']} at {r['img_size']} px; torch {r['torch']}, "
                      f"{r['threads']} threads, median of {r['steps']} alternating steps) | ms | ratio |",
                      "|---|---|---|",
                      f"| plain supervised (forward, backward, AdamW) | {1e3 * r['plain_s']:.1f} | 1.00 |",
                      "| SUN stage 2 (frozen teacher forward, student with local head, BGF targets, backward, AdamW) "
                      f"| "
                      f"{1e3 * r['sun_s']:.1f} | {r['ratio']:.2f} |"])


def rift_step(results: list[dict[str, Any]]) -> str:
    r = results[0]
    return "\n".join([f"| measurement (MiniLM, batch {r['batch']} synth_sentiment sentences; torch {r['torch']}, "
                      f"{r['threads']} threads, median of {r['steps']} alternating steps) | value | ratio |",
                      "|---|---|---|",
                      f"| standard fine-tuning step (CE, backward, AdamW) | {r['standard_s']:.2f} s | 1.00 |",
                      "| RIFT step (ASCC 10 steps, clean + adversarial forward, frozen teacher, InfoNCE, backward, "
                      f"AdamW) | {r['rift_s']:.2f} s | {r['ratio']:.2f} |",
                      f"| exact worst-case enumeration ({r['exact_n']} test sentences, "
                      f"{r['exact_combinations_mean']:.0f} combinations each on average) | "
                      f"{r['exact_sentences_per_s']:.3f} sentences/s | — |"])


SUN_SPEC_PARAMS = {"visformer_micro_80": "12.53M", "nest_micro_resembed_80": "12.80M", "lvvit_micro_80": "12.60M"}


def sun_backbones(results: list[dict[str, Any]]) -> str:
    rows = ["| backbone | input | backbone params | params with head | spec §2.6 | GFLOPs (fvcore) |",
            "|---|---|---|---|---|---|"]
    for r in results[0]["rows"]:
        size = "×".join(map(str, r["input_size"][1:]))
        rows.append(f"| `{r['model']}` | {size} | {r['backbone_params']:,} | {r['params']:,} | "
                    f"{SUN_SPEC_PARAMS.get(r['model'], '—')} | {r['flops'] / 1e9:.4f} |")
    return "\n".join(rows)


SUN_ROWS = {"baseline": "Meta-Baseline without SUN (supervised pretraining, same total epochs)",
            "sun_patch": "SUN: teacher patch labels (no BGF, no SCA)",
            "sun_bgf": "SUN: patch labels + background filtration",
            "sun": "SUN: + spatial-consistent augmentation (full)",
            "cnn": "Meta-Baseline with a ResNet-12-like CNN (`test_resnet12_fs32`; pretraining as the baseline)"}
SUN_SEEDS = (0, 1, 2)


def _sun_files(folder: str, rows: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{folder}/{row}_s{seed}.json" for row in rows for seed in SUN_SEEDS)


SUN_FILES = _sun_files("sun", ("baseline", "sun", "sun_patch", "sun_bgf", "cnn"))
SUN_WRITER = "python experiments/sun_plan.py --seeds 0 1 2 --scale 0.2"
SUN_GLYPHS_FILES = _sun_files("sun/glyphs", ("baseline", "sun", "sun_patch", "sun_bgf", "cnn"))
SUN_GLYPHS_WRITER = "python experiments/sun_plan.py --data glyphs --seeds 0 1 2 --scale 0.1"
SUN_GLYPHS_S03_FILES = _sun_files("sun/glyphs_scale0.3", ("baseline", "sun"))
SUN_GLYPHS_S03_WRITER = ("python experiments/sun_plan.py --data glyphs --seeds 0 1 2 --scale 0.3 "
                         "--results results/sun/glyphs_scale0.3")


def _seed_stats(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, spread


def sun_fewshot(results: list[dict[str, Any]]) -> str:
    """Per row: mean over its seeds of the 2000-episode accuracy, ± the mean per-seed 95% CI, and the seed std; then
    the gate of specs/sun.md §6 (SUN's 1-shot mean − CI above the baseline's mean + CI)."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    first = results[0]
    rows = [f"| row ({first['episodes']} novel episodes, 5-way, {first['queries']} queries, "
            f"seed {first['episode_seed']}) | seeds | 1-shot % (± CI; seed std) | 5-shot % (± CI; seed std) | "
            "1-shot before meta-tuning % |", "|---|---|---|---|---|"]
    summary: dict[str, tuple[float, float]] = {}
    for row, label in SUN_ROWS.items():
        runs = sorted(by_row.get(row, []), key=lambda r: r["seed"])
        if not runs:
            continue
        cells = []
        for shot in ("1shot", "5shot"):
            mean, spread = _seed_stats([r[shot]["mean"] for r in runs])
            ci = sum(r[shot]["ci95"] for r in runs) / len(runs)
            cells.append(f"{mean:.2f} ± {ci:.2f}; " + (f"{spread:.2f}" if len(runs) > 1 else "—"))
            if shot == "1shot":
                summary[row] = (mean, ci)
        before, _ = _seed_stats([r["before_meta"]["1shot"]["mean"] for r in runs])
        seeds = ", ".join(str(r["seed"]) for r in runs)
        rows.append(f"| {label} | {seeds} | {cells[0]} | {cells[1]} | {before:.2f} |")
    (sm, sc), (bm, bc) = summary["sun"], summary["baseline"]
    verdict = "holds" if sm - sc > bm + bc else "does not hold"
    rows.append("")
    rows.append(f"Gate (1-shot): SUN {sm:.2f} − {sc:.2f} = {sm - sc:.2f} vs baseline {bm:.2f} + {bc:.2f} = "
                f"{bm + bc:.2f}: {verdict}.")
    return "\n".join(rows)


RIFT_ROWS = {"standard": "standard fine-tuning (CE)", "rift": "RIFT (CE + 10·KL on ASCC + 0.1·InfoNCE)",
             "ascc_kl": "ASCC + KL without MI (w_mi 0)"}
RIFT_FILES = tuple(f"rift/{row}_s{seed}.json" for row in RIFT_ROWS for seed in (0, 1, 2))
RIFT_WRITER = "python experiments/rift_plan.py --seeds 0 1 2 --steps 20 --n-exact 40"


def rift_synth(results: list[dict[str, Any]]) -> str:
    """Per method: clean accuracy (500 test sentences) and exact worst-case robust accuracy (the first 40), mean ±
    seed std; then the gate of specs/rift.md §6 (RIFT's robust mean above standard fine-tuning's by more than the
    pooled seed std) and the clean-accuracy cost."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_row.setdefault(r["method"], []).append(r)
    rows = ["| method | seeds | clean accuracy (%) | exact worst-case robust accuracy (%) | train s / run |",
            "|---|---|---|---|---|"]
    stats: dict[str, tuple[float, float, float]] = {}
    for row, label in RIFT_ROWS.items():
        runs = sorted(by_row.get(row, []), key=lambda r: r["seed"])
        if not runs:
            continue
        clean, clean_sd = _seed_stats([100 * r["clean_accuracy"] for r in runs])
        robust, robust_sd = _seed_stats([100 * r["exact_robust_accuracy"] for r in runs])
        stats[row] = (robust, robust_sd, clean)
        seconds = sum(r["train_seconds"] for r in runs) / len(runs)
        one = len(runs) == 1
        clean_cell = f"{clean:.2f}" + (" (one seed)" if one else f" ± {clean_sd:.2f}")
        robust_cell = f"{robust:.2f}" + (" (one seed)" if one else f" ± {robust_sd:.2f}")
        rows.append(f"| {label} | {', '.join(str(r['seed']) for r in runs)} | {clean_cell} | {robust_cell} | "
                    f"{seconds:.0f} |")
    (rm, rs, rc), (bm, bs, bc) = stats["rift"], stats["standard"]
    pooled = ((rs ** 2 + bs ** 2) / 2) ** 0.5
    verdict = "holds" if rm - bm > pooled else "does not hold"
    rows.append("")
    rows.append(f"Gate: RIFT − standard = {rm - bm:.2f} points of exact worst-case robust accuracy vs the pooled seed "
                f"std {pooled:.2f}: {verdict}. Clean-accuracy cost: {bc - rc:.2f} points.")
    return "\n".join(rows)


TZ_ROWS = {"transzero_pp": "TransZero++ (AVT + VAT, collaborative losses)",
           "global": "global-feature compatibility baseline",
           "avt": "AVT only (TransZero)", "vat": "VAT only"}
TZ_FILES = tuple(f"transzero/{row}_s{seed}.json" for row in TZ_ROWS for seed in (0, 1, 2))
TZ_WRITER = "python experiments/transzero_plan.py --seeds 0 1 2 --set train.epochs=50 --set train.eval_every=5"
TZ_LR_FILES = tuple(f"transzero/lr1e-4/{row}_s{seed}.json" for row in ("transzero_pp", "global") for seed in (0, 1, 2))
TZ_LR_WRITER = ("python experiments/transzero_plan.py --seeds 0 1 2 --rows transzero_pp global --tag lr1e-4 "
                "--set optim.lr=1e-4 --set train.epochs=50 --set train.eval_every=5")
TZ_3K_FILES = tuple(f"transzero/it3000/{row}_s{seed}.json" for row in TZ_ROWS for seed in (0, 1, 2))
TZ_3K_WRITER = "python experiments/transzero_plan.py --seeds 0 1 2 --tag it3000"
TZ_3K_LR_FILES = tuple(f"transzero/it3000_lr1e-4/{row}_s{seed}.json" for row in ("transzero_pp", "global")
                       for seed in (0, 1, 2))
TZ_3K_LR_WRITER = ("python experiments/transzero_plan.py --seeds 0 1 2 --rows transzero_pp global --tag it3000_lr1e-4 "
                   "--set optim.lr=1e-4")


def transzero_digits(results: list[dict[str, Any]]) -> str:
    """Per row: mean ± seed std of the final-iteration CZSL acc and GZSL U / S / H on digits_zsl, the best-on-test
    H and acc beside them; then the gate of specs/transzero.md §6 (TransZero++ above the baseline by more than the
    pooled seed std, on H and on acc)."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    steps = results[0]["steps"]
    rows = [f"| row (digits_zsl, {steps} iterations; mean ± seed std) | seeds | CZSL acc % | U % | S % | H % | "
            "best-on-test H % | best-on-test acc % |", "|---|---|---|---|---|---|---|---|"]
    stats: dict[str, dict[str, tuple[float, float]]] = {}
    for row, label in TZ_ROWS.items():
        runs = sorted(by_row.get(row, []), key=lambda r: r["seed"])
        if not runs:
            continue
        stats[row] = {k: _seed_stats([r[k] for r in runs])
                      for k in ("acc", "U", "S", "H", "best_on_test_H", "best_on_test_acc")}
        cells = " | ".join(f"{m:.1f} ± {sd:.1f}" if len(runs) > 1 else f"{m:.1f}" for m, sd in stats[row].values())
        rows.append(f"| {label} | {', '.join(str(r['seed']) for r in runs)} | {cells} |")
    rows.append("")
    for key, name in (("H", "GZSL H"), ("acc", "CZSL acc")):
        (tm, ts), (bm, bs) = stats["transzero_pp"][key], stats["global"][key]
        pooled = ((ts ** 2 + bs ** 2) / 2) ** 0.5
        verdict = "holds" if tm - bm > pooled else "does not hold"
        rows.append(f"Gate ({name}): TransZero++ {tm:.1f} − baseline {bm:.1f} = {tm - bm:.1f} vs pooled seed std "
                    f"{pooled:.1f}: {verdict}.")
    return "\n".join(rows)


def transzero_speed(results: list[dict[str, Any]]) -> str:
    r = results[0]
    e, s = r["extraction"], r["step"]
    load = r["load_average"]
    return "\n".join([f"| measurement (torch {r['torch']}, {r['threads']} threads; load average {load[0]} → "
                      f"{load[1]}) | value |", "|---|---|",
                      f"| region-feature extraction, ResNet-101 at 448 px → 2048×14×14, batch {e['batch']} "
                      f"({e['images']} images) | {e['images_per_s']:.2f} images/s |",
                      f"| TransZero++ CUB training step, batch {s['batch']} (median of {s['steps']}) | "
                      f"{s['step_s']:.2f} s |",
                      f"| the same step, geometry bias recomputed per image (official) | "
                      f"{s['step_per_image_geometry_s']:.2f} s |"])


TRAIN_STEP_LABELS = {"iformer_small": "vitlab `iformer_small`",
                     "deit_small_patch16_224": "timm `deit_small_patch16_224`",
                     "swin_tiny_patch4_window7_224": "timm `swin_tiny_patch4_window7_224`"}


def train_step(results: list[dict[str, Any]]) -> str:
    """Training-step time (forward, CE, backward, AdamW) per model against DeiT-S, one row per model and result file
    (benchmarks/bench_train_step.py); the files are labelled by the commit they measured."""
    first = results[0]
    rows = [f"| code | model ({first['device_name']}, {first['threads']} threads, batch {first['batch']} at "
            f"{first['img_size']} px, amp {first['amp']}; median of {first['rounds']} alternating rounds) | step (s) | "
            "min-max (s) | images/s | step / DeiT-S step (paired median) | saved for backward (MiB) | "
            "peak memory (MiB) | load average |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        load = f"{r['load_average_before'][0]} → {r['load_average_after'][0]}"
        for row in r["rows"]:
            peak = "—" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
            label = TRAIN_STEP_LABELS.get(row["model"], row["model"])
            rows.append(f"| {r['commit']} | {label} | {row['step_s']:.2f} | "
                        f"{row['min_s']:.2f}-{row['max_s']:.2f} | {row['images_per_s']:.2f} | "
                        f"{row['ratio_to_reference']:.2f} | {row['saved_mib']:.0f} | {peak} | {load} |")
    return "\n".join(rows)


def cli_startup(results: list[dict[str, Any]]) -> str:
    """Wall time of ``python -m vitlab ...`` at an earlier commit and at the working tree, medians over alternating
    runs (benchmarks/bench_cli.py)."""
    r = results[0]
    rows = [f"| command ({r['threads']} CPUs, median of {r['runs']} alternating runs) | {r['before']} (s) | "
            f"{r['after']} (s) | after, slowest run (s) | speed-up | exit code | same output | load average |",
            "|---|---|---|---|---|---|---|---|"]
    load = f"{r['load_average_before'][0]} → {r['load_average_after'][0]}"
    for row in r["rows"]:
        command = " ".join(row["argv"])
        exit_code = "/".join(map(str, sorted(set(row["exit_before"]) | set(row["exit_after"]))))
        rows.append(f"| {row['name']}: `{command}` | {row['before_s']:.2f} | {row['after_s']:.2f} | "
                    f"{max(row['after_runs_s']):.2f} | {row['speedup']:.0f}× | {exit_code} | "
                    f"{'yes' if row['same_output'] else 'no'} | {load} |")
    return "\n".join(rows)


def iformer_train_step(results: list[dict[str, Any]]) -> str:
    """Before vs after the memory-lean training path of iFormer (issue 18): per file and model the median step, the
    paired ratio to DeiT-S's step, the ratio of the fastest steps (the load-robust figure on a shared machine), and
    the bytes saved for backward in fp32 and under bf16 autocast; then one summary line."""
    after, before = results
    rows = [f"| code | model ({after['device_name']}, {after['threads']} threads, batch {after['batch']} at "
            f"{after['img_size']} px, amp {after['amp']}) | rounds | step (s) | min-max (s) | step / DeiT-S step "
            "(paired median) | fastest step / DeiT-S fastest | saved for backward, fp32 (MiB) | saved, bf16 autocast "
            "(MiB) | peak memory (MiB) | load average |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for label, r in (("before", before), ("after", after)):
        reference = next(row for row in r["rows"] if row["model"] == r["reference"])
        load = f"{r['load_average_before'][0]} → {r['load_average_after'][0]}"
        for row in r["rows"]:
            fastest = row["min_s"] / reference["min_s"]
            bf16 = row.get("saved_mib_bf16")
            peak = "—" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
            rows.append(f"| {label} ({r['commit']}) | {TRAIN_STEP_LABELS.get(row['model'], row['model'])} | "
                        f"{r['rounds']} | {row['step_s']:.2f} | {row['min_s']:.2f}-{row['max_s']:.2f} | "
                        f"{row['ratio_to_reference']:.2f} | {fastest:.2f} | {row['saved_mib']:.0f} | "
                        f"{'—' if bf16 is None else f'{bf16:.0f}'} | {peak} | {load} |")
            if row["model"] == "iformer_small":
                summary[label] = (row["ratio_to_reference"], fastest, row["saved_mib"], bf16, reference)
    ratio_0, fast_0, saved_0, bf16_0, _ = summary["before"]
    ratio_1, fast_1, saved_1, bf16_1, deit_1 = summary["after"]
    line = (f"iFormer-S step / DeiT-S step: {ratio_0:.2f} → {ratio_1:.2f} (paired median), {fast_0:.2f} → "
            f"{fast_1:.2f} (fastest steps); saved for backward, fp32: {saved_0:.0f} → {saved_1:.0f} MiB "
            f"({saved_1 / deit_1['saved_mib']:.2f}x DeiT-S's {deit_1['saved_mib']:.0f})")
    if bf16_0 is not None and bf16_1 is not None:
        line += (f"; bf16 autocast: {bf16_0:.0f} → {bf16_1:.0f} MiB ({bf16_1 / deit_1['saved_mib_bf16']:.2f}x "
                 f"DeiT-S's {deit_1['saved_mib_bf16']:.0f})")
    return "\n".join(rows) + "\n\n" + line + "."


def reliability_bad_inputs(results: list[dict[str, Any]]) -> str:
    """Issue 19's mistakes through the real command: exit code and what it printed (experiments/bad_inputs.py)."""
    rows = ["| mistake | exit | stderr |", "| --- | --- | --- |"]
    rows += [f"| {r['mistake']} | {r['exit']} | {r['stderr'].replace('|', '/')} |" for r in results[0]["rows"]]
    return "\n".join(rows)


LOADER_LABELS = {"pil0": "PIL per image (`method.crops.backend: pil`), 0 workers",
                 "pil2": "PIL per image (`method.crops.backend: pil`), 2 workers",
                 "batch": "batched crops (`method.crops.backend: batch`), made on the CPU"}


def loader_speed(results: list[dict[str, Any]]) -> str:
    """Items/s of the Mugs glyphs multi-crop pipeline alone, per variant, and the ratio to PIL with 0 workers
    (benchmarks/bench_loader.py)."""
    r = results[0]
    load = f"{r['load_average'][0]} → {r['load_average'][1]}"
    rows = [f"| input pipeline (`{r['recipe']}`, batch {r['batch_size']}; torch {r['torch']}, {r['threads']} threads "
            f"on {r['cpu_count']} cores, load average {load}; median of {r['rounds']} alternating rounds of "
            f"{r['items']} images) | items/s | vs PIL, 0 workers |", "|---|---|---|"]
    base = r["items_per_s"]["pil0"]
    rows += [f"| {label} | {r['items_per_s'][k]:.0f} | {r['items_per_s'][k] / base:.2f}× |"
             for k, label in LOADER_LABELS.items()]
    return "\n".join(rows)


def mugs_glyphs_budget(results: list[dict[str, Any]]) -> str:
    """Seconds per epoch and per evaluation of the Mugs glyphs rows with the batched crops, extrapolated to the
    300-epoch plan (benchmarks/bench_mugs_budget.py)."""
    r = results[0]
    plan = r["plan"]
    names = {"mugs": "Mugs (IDS + LGDS + GDS)", "gds_only": "GDS-only (`method.loss_weights=[0,0,1]`)"}
    rows = [f"| row (`{r['recipe']}`, batched crops; torch {r['torch']}, {r['threads']} thread; median of "
            f"{max(1, r['epochs_measured'] - 1)} epoch(s) after the first) | s / epoch | every epoch (s) | "
            f"novel-class k-NN (s) | k-NN + linear probe (s) | one {plan['epochs']}-epoch run (min) |",
            "|---|---|---|---|---|---|"]
    for key, row in r["rows"].items():
        every = " / ".join(f"{v:.1f}" for v in row["epoch_s"])
        rows.append(f"| {names.get(key, key)} | {row['epoch_s_median']:.1f} | {every} | {row['knn_s']:.1f} | "
                    f"{row['eval_s']:.1f} | {plan['run_minutes'][key]:.0f} |")

    def verdict(fits: bool) -> str:
        return "fits" if fits else "does not fit"

    rows += ["", f"Plan ({plan['epochs']} epochs × {plan['seeds']} seeds × {len(plan['rows'])} rows, an evaluation "
             f"every {r['rows']['mugs']['eval_every']} epochs): {plan['serial_minutes']:.0f} min serial "
             f"({verdict(plan['fits_serial'])}), {plan['two_at_a_time_minutes']:.0f} min two processes at a time "
             f"({verdict(plan['fits_two_at_a_time'])}) in a {plan['session_minutes']:.0f}-minute session; one seed "
             f"of both rows side by side takes {plan['two_at_a_time_minutes'] / plan['seeds']:.0f} min. Load "
             f"average {r['load_average'][0]} → {r['load_average'][1]} on {r['cpu_count']} cores."]
    return "\n".join(rows)


def _experiment(name: str) -> Any:
    """experiments/<name>.py as a module, loaded without running it (its summaries need neither torch nor vitlab)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MUGS300_FILES = tuple(f"mugs/glyphs300/{row}_s{seed}.json" for row in ("mugs", "gds_only") for seed in (0, 1, 2))
MUGS300_WRITER = ("python experiments/mugs_accuracy.py --data glyphs --seeds 0 --methods mugs "
                  "--out results/mugs/glyphs300/mugs_s0.json --runs-dir runs/mugs300 --set train.epochs=300 "
                  "--set train.eval_every=30")


def _mugs_runs(results: list[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    mugs = _experiment("mugs_accuracy")
    return mugs, mugs.merge_loaded([(str(i), r) for i, r in enumerate(results)])


def mugs_glyphs300(results: list[dict[str, Any]]) -> str:
    """The Mugs glyphs plan at 300 epochs: Mugs, GDS-only, random init and raw pixels under the same k-NN (novel
    classes) and linear probe, 3 seeds, then the gate lines of specs/mugs.md §6 (experiments/mugs_accuracy.py)."""
    mugs, runs = _mugs_runs(results)
    return str(mugs.markdown_table(mugs.summarize(runs)))


def mugs_glyphs300_curve(results: list[dict[str, Any]]) -> str:
    """The same runs along training: k-NN at every evaluation (each 30 epochs) and the probe at the last."""
    mugs, runs = _mugs_runs(results)
    minutes = {label: [runs[k]["train_s"] / 60 for k in runs if k.startswith(label + "/") and "train_s" in runs[k]]
               for label in ("mugs", "gds_only")}
    spans = "; ".join(f"{mugs.LABELS[label].split(' (')[0]} {min(m):.0f}–{max(m):.0f} min"
                      for label, m in minutes.items() if m)
    return str(mugs.along_training_table(runs)) + f"\n\nTraining time of one run, evaluations included: {spans}."


@dataclass(frozen=True)
class Table:
    files: tuple[str, ...]  # under results/
    printer: Callable[[list[dict[str, Any]]], str]
    writer: str  # the command that writes the result files again


TABLES: dict[str, Table] = {
    "iformer_sizes": Table(("iformer/complexity.json",), iformer_sizes, "python experiments/complexity.py iformer"),
    "dualformer_sizes": Table(("dualformer/complexity.json",), dualformer_sizes,
                              "python experiments/complexity.py dualformer"),
    "ar_cam_ink": Table(("ar/cam_ink.json", "ar/cam_ink_vit_tiny.json"), ar_cam_ink,
                        "python experiments/ar_lens.py --retrain"),
    "demo_times": Table(("demo/times.json",), demo_times, "python experiments/demo_times.py --groups 3 --threads 1"),
    "demo_fresh": Table(("demo/fresh_clone.json",), demo_fresh,
                        "d=$(mktemp -d) && git clone -q . $d && cd $d && make test && time make demo "
                        "(its runs/demo/report.json)"),
    "sun_backbones": Table(("sun/complexity.json",), sun_backbones, "python experiments/complexity.py sun"),
    "episodes_speed": Table(("benchmarks/episodes.json",), episodes_speed,
                            "python benchmarks/bench_episodes.py --threads 2 --reps 3 "
                            "--out results/benchmarks/episodes.json"),
    "sun_fewshot": Table(SUN_FILES, sun_fewshot, SUN_WRITER),
    "rift_synth": Table(RIFT_FILES, rift_synth, RIFT_WRITER),
    "rift_step": Table(("benchmarks/rift_step.json",), rift_step,
                       "python benchmarks/bench_rift.py --steps 5 --threads 2 --out results/benchmarks/rift_step.json"),
    "sun_fewshot_glyphs": Table(SUN_GLYPHS_FILES, sun_fewshot, SUN_GLYPHS_WRITER),
    "sun_fewshot_glyphs_scale03": Table(SUN_GLYPHS_S03_FILES, sun_fewshot, SUN_GLYPHS_S03_WRITER),
    "sun_step": Table(("benchmarks/sun_step.json",), sun_step,
                      "python benchmarks/bench_sun.py --steps 15 --threads 2 --out results/benchmarks/sun_step.json"),
    "transzero_digits": Table(TZ_FILES, transzero_digits, TZ_WRITER),
    "transzero_digits_lr1e4": Table(TZ_LR_FILES, transzero_digits, TZ_LR_WRITER),
    "transzero_digits_3k": Table(TZ_3K_FILES, transzero_digits, TZ_3K_WRITER),
    "transzero_digits_3k_lr1e4": Table(TZ_3K_LR_FILES, transzero_digits, TZ_3K_LR_WRITER),
    "transzero_speed": Table(("benchmarks/transzero.json",), transzero_speed,
                             "python benchmarks/bench_transzero.py --threads 2 --steps 5 --images 8 "
                             "--out results/benchmarks/transzero.json"),
    "iformer_train_step_before": Table(("benchmarks/iformer_train_step_before.json",), train_step,
                                       "python benchmarks/bench_train_step.py --threads 2 --batch-size 8 --rounds 7 "
                                       "--out results/benchmarks/iformer_train_step_before.json"),
    "cli_startup": Table(("benchmarks/cli.json",), cli_startup,
                         "python benchmarks/bench_cli.py --before dcef215 --runs 3 --threads 2 "
                         "--out results/benchmarks/cli.json"),


    "iformer_train_step": Table(("benchmarks/iformer_train_step.json", "benchmarks/iformer_train_step_before.json"),
                                iformer_train_step,
                                "python benchmarks/bench_train_step.py --threads 2 --batch-size 8 --rounds 7 "
                                "--out results/benchmarks/iformer_train_step.json"),
    "reliability_bad_inputs": Table(("reliability/bad_inputs.json",), reliability_bad_inputs,
                                    "python experiments/bad_inputs.py"),
    "loader_speed": Table(("benchmarks/loader.json",), loader_speed,
                          "python benchmarks/bench_loader.py --threads 2 --out results/benchmarks/loader.json"),
    "mugs_glyphs300": Table(MUGS300_FILES, mugs_glyphs300, MUGS300_WRITER),
    "mugs_glyphs300_curve": Table(MUGS300_FILES, mugs_glyphs300_curve, MUGS300_WRITER),
    "mugs_glyphs_budget": Table(("benchmarks/mugs_glyphs_budget.json",), mugs_glyphs_budget,
                                "python benchmarks/bench_mugs_budget.py --threads 1 --epochs 3 "
                                "--out results/benchmarks/mugs_glyphs_budget.json"),
}


def render(name: str, results_dir: Path = RESULTS) -> str:
    """The table ``name`` from its result files; ValueError (one line) for an unknown name or a missing file."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r} (one of: {', '.join(sorted(TABLES))})")
    table = TABLES[name]
    loaded = []
    for rel in table.files:
        path = results_dir / rel
        if not path.is_file():
            raise ValueError(f"{path}: no such result file (write it with `{table.writer}`)")
        try:
            loaded.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
    try:
        return table.printer(loaded)
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"{name}: result files of the wrong shape ({type(err).__name__}: {err})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="the table to print")
    parser.add_argument("--list", action="store_true", help="list the tables, their result files and writers")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default: results/)")
    args = parser.parse_args(argv)
    if args.list:
        for name, table in sorted(TABLES.items()):
            print(f"{name}\t{', '.join('results/' + f for f in table.files)}\t{table.writer}")
        return 0
    if args.name is None:
        parser.error("give a table name (--list lists them)")
    try:
        print(render(args.name, args.results))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
