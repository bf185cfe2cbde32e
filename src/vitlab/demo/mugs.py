"""``vitlab demo`` section: Mugs pretraining of a tiny ViT on digits, scored by k-NN and a linear probe."""

from __future__ import annotations

from pathlib import Path

import torch

from vitlab.config import load_config
from vitlab.demo.sections import demo_section
from vitlab.methods.mugs import Mugs

DEMO_OVERRIDES = ["data.img_size=16", "data.batch_size=64", "method.crops.global_size=16", "method.crops.local_size=8",
                  "method.crops.local_number=2", "train.epochs=3", "train.eval_every=3", "optim.lr=1e-3",
                  "optim.warmup_epochs=1", "method.momentum_teacher=0.95", "method.gds.warmup_teacher_temp_epochs=2",
                  "train.log_every=22"]
DEMO_QUICK = ["train.epochs=1", "train.max_steps=2", "data.batch_size=32", "method.eval.probe_epochs=2",
              "method.eval.knn_k=[20]", "model.kwargs.depth=2", "method.eval.probe_last_blocks=2",
              "method.ids.queue_size=64", "method.lgds.queue_size=64", "method.lgds.memory_size=64",
              "method.gds.prototypes=64"]


@demo_section("mugs", "Mugs self-supervised pretraining (tiny ViT on digits, labels unused)", seconds=60)
def _demo(folder: Path, quick: bool) -> str:
    from vitlab.demo.sections import recipe_path
    from vitlab.engine.trainer import train
    from vitlab.methods.base import data_info_from

    overrides = [f"out_dir={folder}", "name=mugs_digits", "train.progress=false", *DEMO_OVERRIDES,
                 *(DEMO_QUICK if quick else [])]
    cfg = load_config(recipe_path("mugs/vit_tiny_digits.yaml"), overrides)
    trained = train(cfg, overwrite=True)
    torch.manual_seed(cfg.train.seed)
    untrained = Mugs(cfg, data_info_from(cfg, Mugs.build_datasets(cfg)["train"])).eval()
    with torch.no_grad():
        random_init = untrained.evaluate({}, None)
    rows = [f"| {name} | {m['knn_top1']:.1f} | {m['probe_top1']:.1f} |"
            for name, m in (("random init", random_init), ("Mugs", trained))]
    return "\n".join([
        f"A ViT (patch 4, width 96) pretrained for {cfg.train.epochs} epoch(s) on 16-px digits with IDS + LGDS + GDS; "
        "the teacher backbone's features are scored without fine-tuning (k-NN k = 20, T = 0.05; linear probe on the "
        f"concatenated [CLS] of the last {Mugs.method_config(cfg).eval.probe_last_blocks} blocks). docs/mugs.md has "
        "the 3-seed table and the GDS-only comparison.",
        "", "| backbone | k-NN top-1 (%) | linear probe top-1 (%) |", "|---|---|---|", *rows])
