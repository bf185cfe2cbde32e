"""The RIFT small-scale plan (specs/rift.md §6): standard fine-tuning, RIFT and ASCC + KL without MI on
``synth_sentiment`` with the bundled MiniLM, 3 seeds; clean accuracy on the 500 test sentences and exact worst-case
robust accuracy (every substitution combination) on the first ``--n-exact`` of them.

One result file per method and seed, ``results/rift/<method>_s<seed>.json``; existing files are skipped (resumable).
Printed by ``python experiments/tables.py rift_synth``.

    OMP_NUM_THREADS=1 python experiments/rift_plan.py [--steps 20] [--n-exact 40] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"standard": "minilm_synth_sentiment_standard", "rift": "minilm_synth_sentiment",
           "ascc_kl": "minilm_synth_sentiment_ascc"}


def run_one(method: str, seed: int, args: argparse.Namespace) -> dict:
    from vitlab.attacks.text import attack_text_model
    from vitlab.config import load_config
    from vitlab.engine.checkpoint import load_method
    from vitlab.engine.trainer import train
    from vitlab.methods.rift import load_tokenizer

    name = f"rift_plan_{method}_s{seed}"
    overrides = [f"name={name}", f"out_dir={args.out_dir}", f"train.seed={seed}", "train.epochs=1",
                 f"train.steps_per_epoch={args.steps}", f"optim.lr={args.lr}", "train.progress=false",
                 "train.log_every=10"]
    cfg = load_config(ROOT / "recipes" / "rift" / f"{RECIPES[method]}.yaml", overrides)
    t0 = time.time()
    metrics = train(cfg, overwrite=True)
    train_s = time.time() - t0
    ckpt = Path(args.out_dir) / name / "best.ckpt"
    m, _ = load_method(ckpt)
    model = m.eval_model().eval()
    test = type(m).build_datasets(m.cfg)["test"].tensors  # type: ignore[attr-defined]
    unk = int(load_tokenizer(m.cfg.method.backbone).unk_token_id)
    clean = attack_text_model(model, {k: v[:1] for k, v in test.items()}, "exact", unk)  # warm-up
    t1 = time.time()
    with torch.no_grad():
        pred = torch.cat([model(test["input_ids"][i:i + 250], test["attention_mask"][i:i + 250],
                                test["token_type_ids"][i:i + 250]).argmax(1)
                          for i in range(0, len(test["label"]), 250)])
    clean_acc = float((pred == test["label"]).float().mean())
    exact = attack_text_model(model, {k: v[: args.n_exact] for k, v in test.items()}, "exact", unk)
    del clean
    return {"command": "python experiments/rift_plan.py --seeds 0 1 2 --steps 20 --n-exact 40",
            "method": method, "seed": seed, "recipe": f"recipes/rift/{RECIPES[method]}.yaml", "overrides": overrides,
            "steps": args.steps, "batch": cfg.data.batch_size * 2, "train_seconds": train_s,
            "clean_accuracy": clean_acc, "n_test": int(len(test["label"])),
            "exact_clean_accuracy": exact["clean_accuracy"], "exact_robust_accuracy": exact["robust_accuracy"],
            "n_exact": exact["n"], "combinations_mean": exact["combinations_mean"],
            "combinations_max": exact["combinations_max"], "exact_seconds": exact["seconds"],
            "eval_seconds": time.time() - t1, "val_top1": metrics.get("val_top1"), "test_top1": metrics.get("top1")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--n-exact", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(RECIPES))
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--commit", action="store_true", help="git-commit every result file as soon as it exists")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = ROOT / "results" / "rift"
    out.mkdir(parents=True, exist_ok=True)
    # standard and RIFT for every seed first, then the ablation: the comparison the plan gates on comes first
    order = [(s, m) for s in args.seeds for m in args.methods if m != "ascc_kl"]
    order += [(s, "ascc_kl") for s in args.seeds if "ascc_kl" in args.methods]
    for seed, method in order:
        if True:
            path = out / f"{method}_s{seed}.json"
            if path.exists():
                continue
            result = run_one(method, seed, args)
            from vitlab.engine.checkpoint import atomic_write_bytes

            atomic_write_bytes((json.dumps(result, indent=2) + "\n").encode(), path)
            print(json.dumps(result), flush=True)
            if args.commit:
                for _ in range(5):
                    subprocess.run(["git", "add", str(path)], cwd=ROOT)
                    r = subprocess.run(["git", "commit", "-m", f"results/rift: {path.stem}", "--", str(path)],
                                       cwd=ROOT)
                    if r.returncode == 0:
                        break
                    time.sleep(3)


if __name__ == "__main__":
    main()
