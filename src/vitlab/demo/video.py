"""``vitlab demo`` section: DualFormer against a frame-averaged ViT on moving digits."""

from __future__ import annotations

import time
from pathlib import Path

from vitlab.demo.sections import demo_section, plot_compared_runs

DEMO_EPOCHS = 2  # the recipes train 15 epochs of 4 videos per digit; the demo 2 of 1
DEMO_VIDEOS_PER_DIGIT = 1


@demo_section("video", "DualFormer on moving digits (video, multi-view testing)", seconds=60)
def _demo(folder: Path, quick: bool) -> str:
    """``test_dualformer`` against the frame-averaged 2-D baseline on ``moving_digits`` motion."""
    from vitlab.config import load_config
    from vitlab.demo.sections import recipe_path
    from vitlab.engine.trainer import train

    rows, runs = [], {}
    for recipe, title in (("video/test_dualformer_moving_digits.yaml", "test_dualformer (LW + GP attention)"),
                          ("video/frame_avg_vit_moving_digits.yaml", "frame-averaged 2-D ViT")):
        overrides = [f"out_dir={folder}", "train.progress=false"]
        if quick:
            overrides += ["train.epochs=1", "train.max_steps=3", "data.batch_size=8", "data.video.max_test_videos=16",
                          "method.count_flops=false"]
        else:
            overrides += [f"train.epochs={DEMO_EPOCHS}", f"data.video.train_videos_per_digit={DEMO_VIDEOS_PER_DIGIT}",
                          "train.log_every=10"]
        cfg = load_config(recipe_path(recipe), overrides)
        t0 = time.time()
        metrics = train(cfg, overwrite=True)
        runs[title.split(" (")[0]] = cfg.run_dir
        flops = f"{metrics['flops_per_view'] / 1e6:.2f}" if "flops_per_view" in metrics else "-"
        rows.append(f"| {title} | {cfg.train.epochs} | {metrics['top1']:.1f} | {int(metrics['views'])} | {flops} | "
                    f"{time.time() - t0:.0f} |")
    plot_compared_runs(runs, folder / "video_curves.png", "moving digits, label = motion (chance 25%)")
    return ("DualFormer attends locally within space-time windows and globally through pyramid-pooled keys, so it "
            "sees frame order; the baseline averages a 2-D ViT over the frames. Label `motion` (4 directions; chance "
            "25%): a frame-order-invariant model cannot beat chance. Recipes "
            "`recipes/video/test_dualformer_moving_digits.yaml` and `frame_avg_vit_moving_digits.yaml`"
            + (" (shortened: --quick, a few steps)" if quick else f" ({DEMO_EPOCHS} epochs of {DEMO_VIDEOS_PER_DIGIT} "
               "video per training digit instead of 15 of 4)") + ".\n\n"
            "| model | epochs | test top-1 (%) | views | MFLOPs/view | time (s) |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n![training curves](video/video_curves.png)\n")
