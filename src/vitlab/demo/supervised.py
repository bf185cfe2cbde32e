"""``vitlab demo`` section: supervised training of a ResNet-18 on digits."""

from __future__ import annotations

import time
from pathlib import Path

from vitlab.config import load_config
from vitlab.demo.sections import demo_section, plot_training_curves, recipe_path


@demo_section("supervised", "Supervised training (resnet18 on digits)")
def _supervised(folder: Path, quick: bool) -> str:
    from vitlab.engine.trainer import train

    overrides = [f"out_dir={folder}", "name=resnet18_digits", "train.progress=false"]
    if quick:
        overrides += ["train.epochs=1", "train.max_steps=8", "data.batch_size=32"]
    cfg = load_config(recipe_path("supervised/resnet18_digits.yaml"), overrides)
    t0 = time.time()
    metrics = train(cfg, overwrite=True)
    seconds = time.time() - t0
    plot_training_curves(cfg.run_dir, folder / "resnet18_digits_curve.png", "resnet18 on digits")
    return ("Recipe `recipes/supervised/resnet18_digits.yaml`"
            + (" (shortened: --quick)" if quick else "") + ".\n\n"
            "| model | data | epochs | test top-1 (%) | test top-5 (%) | time (s) |\n|---|---|---|---|---|---|\n"
            f"| resnet18 | digits 32x32 | {cfg.train.epochs} | {metrics['top1']:.2f} | {metrics['top5']:.2f} | "
            f"{seconds:.0f} |\n\n![training curve](supervised/resnet18_digits_curve.png)\n")
