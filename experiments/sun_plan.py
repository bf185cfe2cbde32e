"""The small-scale SUN plan of specs/sun.md §6: Meta-Baseline without SUN against SUN, the ablations, a CNN row.

``--data digits`` (the spec's plan: base digits 0-4, novel 5-9) or ``--data glyphs`` (``glyphs_fewshot``: 80 base,
40 novel glyph classes). Recipes ``recipes/sun/<data>_*.yaml``. Rows (each one then meta-tuned with
``<data>_meta.yaml`` from its stage-2 / pretraining checkpoint):

- ``baseline``: supervised base-class pretraining (``<data>_baseline_pretrain.yaml``) for teacher + student epochs;
- ``sun``: the full method: teacher (``<data>_teacher.yaml``), then the SUN student (``<data>_sun.yaml``);
- ``sun_patch``: teacher patch labels only (no BGF, no SCA; ``<data>_sun_patch.yaml``);
- ``sun_bgf``: patch labels + BGF, no SCA (``<data>_sun_bgf.yaml``);
- ``cnn``: the baseline with the ResNet-12-like ``test_resnet12_fs32`` instead of the ViT (same recipes and epochs).

Every row is evaluated on the novel classes: 2000 episodes 5-way 1-shot and 5-shot, 15 queries, seed 12345,
cosine prototypes, mean and the 95% CI (t-quantile, 1.9612 at 2000 episodes), from the last checkpoint (no selection on
the novel classes). ``results/sun/<row>_s<seed>.json`` (digits) or ``results/sun/glyphs/<row>_s<seed>.json`` is
written atomically as each run finishes; a row whose file exists is skipped, a stage whose run folder holds ``done``
is reused, so the plan resumes after a crash.
Two plans can share the run folder: a stage another process is training is waited for (a ``lock`` file).

``--scale`` multiplies every stage's epochs and the meta-tuning batches (1 = the spec's 30 / 60 / 90 epochs and
10 x 50 batches); the recorded files carry the epochs used.

    OMP_NUM_THREADS=1 python experiments/sun_plan.py --seeds 0 1 2 --rows baseline sun
    OMP_NUM_THREADS=1 python experiments/sun_plan.py --data glyphs --seeds 0 1 2 --rows baseline sun --scale 0.15
    python experiments/tables.py sun_fewshot
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "sun"
ROWS = ("baseline", "sun", "sun_patch", "sun_bgf", "cnn")
DATA = ("digits", "glyphs")
STAGE2 = {"sun": "sun.yaml", "sun_patch": "sun_patch.yaml", "sun_bgf": "sun_bgf.yaml"}
CNN_MODEL = "test_resnet12_fs32"
TEACHER_EPOCHS, STUDENT_EPOCHS, META_EPOCHS, META_BATCHES = 30, 60, 10, 50
EPISODES, SEED, QUERIES = 2000, 12345, 15


def _epochs(base: int, scale: float) -> int:
    return max(1, int(round(base * scale)))


def train_stage(name: str, recipe: str, out: Path, seed: int, epochs: int, sets: list[str]) -> Path:
    """Train one stage (or reuse it when its folder holds ``done``); returns its last checkpoint."""
    run_dir = out / name
    ckpt = run_dir / "last.ckpt"
    if (run_dir / "done").exists():
        return ckpt
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / "lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:  # another plan process trains it: wait
        while not (run_dir / "done").exists():
            time.sleep(5)
        return ckpt
    os.close(fd)
    try:
        cmd = [sys.executable, "-m", "vitlab", "train", "-c", str(RECIPES / recipe), "--set", f"name={name}",
               "--set", f"out_dir={out}", "--set", f"train.seed={seed}", "--set", f"train.epochs={epochs}",
               "--set", f"train.eval_every={epochs}", "--set", "train.progress=false", "--overwrite"]
        for s in sets:
            cmd += ["--set", s]
        with open(run_dir / "plan.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        (run_dir / "done").touch()
    finally:
        lock.unlink(missing_ok=True)
    return ckpt


def evaluate(ckpt: Path) -> dict[str, Any]:
    """5-way 1- and 5-shot on the novel classes, 2000 episodes, 15 queries, seed 12345, cosine head, t-quantile CI."""
    import torch

    from vitlab.data import build_dataset
    from vitlab.data.episodes import EpisodeShape
    from vitlab.engine.checkpoint import load_eval_model, load_run_config
    from vitlab.evaluation.episodes import embed_dataset, evaluate_episodes
    from vitlab.methods.sun import pooled_embedding

    cfg = load_run_config(ckpt)
    model = load_eval_model(ckpt)
    novel = build_dataset(cfg.data, "novel", train=False)
    with torch.no_grad():
        features, labels = embed_dataset(lambda x: pooled_embedding(model, x), novel)
    out: dict[str, Any] = {}
    for shots in (1, 5):
        r = evaluate_episodes(features, labels, EpisodeShape(5, shots, QUERIES), EPISODES, SEED, quantile="t")
        out[f"{shots}shot"] = {"mean": round(r["cosine"].mean, 4), "ci95": round(r["cosine"].ci95, 4)}
    return out


def run_row(row: str, seed: int, out: Path, results: Path, scale: float, data: str = "digits",
            results_flag: str = "") -> Path:
    from vitlab.engine.checkpoint import atomic_write_bytes

    target = results / f"{row}_s{seed}.json"
    if target.exists():
        return target
    t0 = time.time()
    te, se = _epochs(TEACHER_EPOCHS, scale), _epochs(STUDENT_EPOCHS, scale)
    model = [f"model.name={CNN_MODEL}"] if row == "cnn" else []
    if row in ("baseline", "cnn"):
        stage2 = train_stage(f"{row}_pretrain_s{seed}", f"{data}_baseline_pretrain.yaml", out, seed, te + se, model)
        epochs = {"pretrain": te + se}
    else:
        teacher = train_stage(f"teacher_s{seed}", f"{data}_teacher.yaml", out, seed, te, [])
        stage2 = train_stage(f"{row}_student_s{seed}", f"{data}_{STAGE2[row]}", out, seed, se,
                             [f"method.teacher_ckpt={teacher}"])
        epochs = {"teacher": te, "student": se}
    me, mb = _epochs(META_EPOCHS, scale), _epochs(META_BATCHES, scale)
    meta = train_stage(f"{row}_meta_s{seed}", f"{data}_meta.yaml", out, seed, me,
                       [f"method.init_ckpt={stage2}", f"method.episodes_per_epoch={4 * mb}", *model])
    epochs.update({"meta_epochs": me, "meta_batches": mb})
    flag = "" if data == "digits" else f" --data {data}"
    command = f"python experiments/sun_plan.py{flag} --seeds 0 1 2 --scale {scale:g}{results_flag}"  # every row's file
    record = {"command": command, "data": data, "row": row, "seed": seed, "scale": scale, "epochs": epochs,
              "model": CNN_MODEL if row == "cnn" else "test_visformer_fs32",
              "episodes": EPISODES, "episode_seed": SEED, "queries": QUERIES, "head": "cosine", "ci": "t",
              "before_meta": evaluate(stage2), **evaluate(meta), "seconds": round(time.time() - t0, 1)}
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes((json.dumps(record, indent=2) + "\n").encode(), target)
    print(f"{row} seed {seed}: 1-shot {record['1shot']['mean']:.2f} ± {record['1shot']['ci95']:.2f}, "
          f"5-shot {record['5shot']['mean']:.2f} ± {record['5shot']['ci95']:.2f}", flush=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--data", choices=DATA, default="digits", help="digits (the spec's plan) or glyphs_fewshot")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folders (default runs/sun_plan, runs/sun_plan_glyphs for glyphs)")
    parser.add_argument("--results", type=Path, default=None,
                        help="result files (default results/sun, results/sun/glyphs for glyphs)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the spec's epochs and meta batches")
    args = parser.parse_args(argv)
    if not math.isfinite(args.scale) or args.scale <= 0:
        parser.error(f"--scale: got {args.scale}, expected a number > 0")
    suffix = "" if args.data == "digits" else f"_{args.data}"
    out = args.out or ROOT / "runs" / f"sun_plan{suffix}"
    results = args.results or ROOT / "results" / "sun" / ("" if args.data == "digits" else args.data)
    results_flag = f" --results {args.results}" if args.results else ""
    for seed in args.seeds:
        for row in args.rows:
            run_row(row, seed, out, results, args.scale, args.data, results_flag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
