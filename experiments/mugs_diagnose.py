"""Mugs diagnosis on digits: one short pretraining run, then its k-NN / probe scores and how parallel the teacher's
[CLS] features of different images are (the mean cosine similarity over 300 test images; random init: about 0.90).

    OMP_NUM_THREADS=1 python experiments/mugs_diagnose.py A                                   # the recipe, 10 epochs
    OMP_NUM_THREADS=1 python experiments/mugs_diagnose.py F method.loss_weights=[1,0,0]       # IDS only
    python experiments/mugs_diagnose.py --cosine runs/mugs_b32/digits/*/last.ckpt     # trained checkpoints only
    python experiments/mugs_diagnose.py --loo knn_train runs/mugs_b32/glyphs/mugs_s0/last.ckpt  # leave-one-out k-NN

Everything runs at 16 px (global crops 16, local crops 8), 10 epochs with 2 warm-up epochs; extra arguments are
recipe overrides. Results of docs/mugs.md "Diagnosis".
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from vitlab.config import load_config
from vitlab.engine.checkpoint import load_method
from vitlab.engine.trainer import train
from vitlab.evaluation.robust import collect
from vitlab.methods.mugs import Mugs


def teacher_cosine(method: Mugs, images: torch.Tensor) -> float:
    """Mean cosine similarity between the teacher [CLS] features of different images."""
    with torch.no_grad():
        f = torch.nn.functional.normalize(method.teacher.backbone.embed(images), dim=1)
    n = f.shape[0]
    return (((f @ f.T).sum() - n) / (n * n - n)).item()


def leave_one_out_knn(features: torch.Tensor, labels: torch.Tensor, k: int = 20, temperature: float = 0.05) -> float:
    """Weighted k-NN top-1 (%) of every image against all the others of the same set (cosine, exp(s / T) votes)."""
    f = torch.nn.functional.normalize(features, dim=1)
    similarity = f @ f.T
    similarity.fill_diagonal_(-2.0)
    values, index = similarity.topk(k, dim=1)
    votes = torch.zeros(f.shape[0], int(labels.max()) + 1).scatter_add_(1, labels[index], (values / temperature).exp())
    return 100.0 * (votes.argmax(1) == labels).float().mean().item()


def loo_report(split: str, path: str) -> None:
    """Class and font leave-one-out k-NN on a glyphs evaluation split: trained teacher, random init, raw pixels."""
    from vitlab.methods.base import data_info_from

    method, _ = load_method(path)
    dataset = Mugs.eval_datasets(method.cfg)[split]
    fonts = sorted(set(dataset.fonts))
    font_labels = torch.tensor([fonts.index(f) for f in dataset.fonts])
    x, y = collect(dataset)
    torch.manual_seed(method.cfg.train.seed)
    random_init = Mugs(method.cfg, data_info_from(method.cfg, Mugs.build_datasets(method.cfg)["train"])).eval()
    with torch.no_grad():
        rows = {"trained": method.teacher.backbone.embed(x), "random init": random_init.teacher.backbone.embed(x),
                "raw pixels": x.flatten(1)}
    for name, f in rows.items():
        print(f"{split} ({len(y)} images, {len(fonts)} fonts) {name}: class {leave_one_out_knn(f, y):.1f}  "
              f"font {leave_one_out_knn(f, font_labels):.1f}", flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="run name (runs/mugs_diagnose/NAME)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--cosine", nargs="+", metavar="CKPT", help="teacher cosine of trained checkpoints only")
    parser.add_argument("--loo", nargs="+", metavar="SPLIT CKPT", help="leave-one-out k-NN on SPLIT of checkpoints")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.loo:
        if len(args.loo) < 2:
            parser.error("--loo takes a split and at least one checkpoint")
        for path in args.loo[1:]:
            loo_report(args.loo[0], path)
        return
    if args.cosine:
        for path in args.cosine:
            method, _ = load_method(path)
            x, _ = collect(Mugs.eval_datasets(method.cfg)["knn_test"], 300)
            print(path, "teacher_cos", round(teacher_cosine(method, x), 4), flush=True)
        return
    if args.name is None:
        parser.error("give a run name, --cosine or --loo")
    name, extra = args.name, args.overrides
    base = ["out_dir=runs/mugs_diagnose", f"name={name}", "train.progress=false", "data.img_size=16",
            "data.batch_size=128", "method.crops.global_size=16", "method.crops.local_size=8", "train.epochs=10",
            "train.eval_every=10",
            "optim.warmup_epochs=2", "method.gds.warmup_teacher_temp_epochs=2", "method.eval.probe_epochs=30"]
    cfg = load_config("recipes/mugs/vit_tiny_digits.yaml", base + extra)
    start = time.time()
    metrics = train(cfg, overwrite=True)
    seconds = time.time() - start
    method, _ = load_method(cfg.run_dir / "last.ckpt")
    x, _ = collect(Mugs.eval_datasets(cfg)["knn_test"], 300)
    print("RESULT", name, extra, json.dumps({k: round(v, 2) for k, v in metrics.items()}),
          "teacher_cos", round(teacher_cosine(method, x), 4), "seconds", round(seconds), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
