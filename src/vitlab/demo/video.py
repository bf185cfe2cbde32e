"""``vitlab demo`` section: DualFormer against a frame-averaged ViT on moving digits."""

from __future__ import annotations

import time
from pathlib import Path

from vitlab.demo.sections import demo_section


@demo_section("video", "DualFormer on moving digits (video, multi-view testing)")
def _demo(folder: Path, quick: bool) -> str:
    """``test_dualformer`` against the frame-averaged 2-D baseline on ``moving_digits`` motion."""
    from vitlab.config import load_config
    from vitlab.demo.sections import recipe_path
    from vitlab.engine.trainer import train

    rows = []
    for recipe, title in (("video/test_dualformer_moving_digits.yaml", "test_dualformer (LW + GP attention)"),
                          ("video/frame_avg_vit_moving_digits.yaml", "frame-averaged 2-D ViT")):
        overrides = [f"out_dir={folder}", "train.progress=false"]
        if quick:
            overrides += ["train.epochs=1", "train.max_steps=3", "data.batch_size=8", "data.video.max_test_videos=16",
                          "method.count_flops=false"]
        else:
            overrides += ["train.epochs=2"]
        cfg = load_config(recipe_path(recipe), overrides)
        t0 = time.time()
        metrics = train(cfg, overwrite=True)
        flops = f"{metrics['flops_per_view'] / 1e6:.2f}" if "flops_per_view" in metrics else "-"
        rows.append(f"| {title} | {cfg.train.epochs} | {metrics['top1']:.1f} | {int(metrics['views'])} | {flops} | "
                    f"{time.time() - t0:.0f} |")
    return ("Label `motion` (4 directions; chance 25%): a frame-order-invariant model cannot beat chance. Recipes "
            "`recipes/video/test_dualformer_moving_digits.yaml` and `frame_avg_vit_moving_digits.yaml`"
            + (" (shortened: --quick, a few steps)" if quick else " (2 epochs instead of 15)") + ".\n\n"
            "| model | epochs | test top-1 (%) | views | MFLOPs/view | time (s) |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
