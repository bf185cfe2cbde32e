"""``vitlab demo`` section: iFormer against a same-size ViT on glyphs."""

from __future__ import annotations

import time
from pathlib import Path

from vitlab.config import load_config
from vitlab.demo.sections import demo_section, plot_compared_runs, recipe_path

DEMO_EPOCHS = 2  # the recipes train 30 epochs on all 8,312 training glyphs
DEMO_PER_CLASS = 20  # training glyphs kept per class (2,720 of 8,312): the demo's budget


@demo_section("iformer", "iFormer against a same-size ViT (glyphs)", seconds=60)
def _iformer(folder: Path, quick: bool) -> str:
    from vitlab.engine.checkpoint import load_eval_model
    from vitlab.engine.trainer import train
    from vitlab.models.profile import model_info

    rows, runs = [], {}
    for recipe, label in (("supervised/test_iformer_glyphs.yaml", "test_iformer"),
                          ("supervised/vit_baseline_glyphs.yaml", "ViT, patch 4, width 160, depth 4")):
        overrides = [f"out_dir={folder}", "train.progress=false", f"train.epochs={DEMO_EPOCHS}", "train.log_every=5",
                     "optim.warmup_epochs=1", f"data.train_per_class={DEMO_PER_CLASS}"]
        if quick:
            overrides += ["train.epochs=1", "train.max_steps=4"]
        cfg = load_config(recipe_path(recipe), overrides)
        t0 = time.time()
        metrics = train(cfg, overwrite=True)
        runs[label.split(",")[0]] = cfg.run_dir
        trained = load_eval_model(cfg.run_dir / "last.ckpt")
        params = sum(p.numel() for p in trained.parameters())
        flops = model_info(cfg.model.name, img_size=32, num_classes=trained.num_classes, **cfg.model.kwargs)["flops"]
        rows.append(f"| {label} | {params / 1e6:.2f} M | {flops / 1e6:.1f} M | {cfg.train.epochs} | "
                    f"{metrics['top1']:.2f} | {time.time() - t0:.0f} |")
    plot_compared_runs(runs, folder / "iformer_vs_vit.png", "glyphs: test_iformer against a same-size ViT")
    return ("iFormer (Inception Transformer) mixes high frequencies (max-pool and depth-wise convolution branches) "
            "with low frequencies (attention) along a frequency ramp; the baseline is a plain ViT of about the same "
            "size. Both trained identically on glyphs (136 classes, test fonts unseen in training)"
            + (" (shortened: --quick, 4 steps)" if quick else f" for {DEMO_EPOCHS} epochs instead of 30 (1 warm-up) on "
               f"{DEMO_PER_CLASS} training glyphs per class instead of all (about 61)")
            + ": a demo this short shows the early learning speed, not the final gap; the 3-seed comparison is in "
            "docs/iformer.md.\n\n"
            "| model | params | FLOPs (32x32) | epochs | test top-1 (%) | time (s) |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n![training curves](iformer/iformer_vs_vit.png)\n")
