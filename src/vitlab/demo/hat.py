"""``vitlab demo`` section: HAT on a tiny ViT on digits, and its frequency response."""

from __future__ import annotations

from pathlib import Path

from vitlab.demo.sections import demo_section, recipe_path


@demo_section("hat", "HAT: high-frequency adversarial training (tiny ViT on digits) and its frequency response")
def _hat_demo(folder: Path, quick: bool) -> str:
    import time

    from vitlab.analysis.frequency import filtered_accuracy, plot_filtered_accuracy
    from vitlab.config import load_config
    from vitlab.data import build_dataset
    from vitlab.engine.checkpoint import load_eval_model
    from vitlab.engine.trainer import train
    from vitlab.evaluation.robust import collect

    size = 8 if quick else 16
    overrides = [f"out_dir={folder}", "name=hat_vit_tiny_digits", "train.progress=false", f"data.img_size={size}",
                 f"model.kwargs.img_size={size}", "data.train_per_class=50", "train.epochs=15",
                 "method.adv_epochs=10", "train.eval_every=15"]
    if quick:
        overrides += ["train.max_steps=2", "data.batch_size=16", "model.kwargs.depth=1",
                      "data.aug.rand_augment=null"]
    cfg = load_config(recipe_path("hat/vit_tiny_digits.yaml"), overrides)
    t0 = time.time()
    metrics = train(cfg, overwrite=True)
    seconds = time.time() - t0
    x, y = collect(build_dataset(cfg.data, "test", train=False), 64 if quick else None)
    radii = (1, 2, 4) if quick else (1, 2, 3, 4, 6, 8)
    rows = filtered_accuracy(load_eval_model(cfg.run_dir / "last.ckpt"), x, y, radii)
    plot_filtered_accuracy({"HAT": rows}, folder / "hat_filtered_accuracy.png",
                           f"digits {size}x{size}: filtered test accuracy")
    header = "| r | " + " | ".join(f"{r['radius']:g}" for r in rows[1:]) + " |"
    return ("Recipe `recipes/hat/vit_tiny_digits.yaml`, low-data regime (50 images per class), "
            f"{size}x{size}" + (" (shortened: --quick)" if quick else "") + f"; test top-1 {metrics['top1']:.2f}%,"
            f" {seconds:.0f} s. Accuracy on low-pass / high-pass filtered test images (radius in frequency bins;"
            " `vitlab analyze frequency --ckpt` gives the same for any checkpoint):\n\n"
            + header + "\n|---|" + "---|" * (len(rows) - 1) + "\n"
            + "| low-pass | " + " | ".join(f"{r['lowpass']:.1f}" for r in rows[1:]) + " |\n"
            + "| high-pass | " + " | ".join(f"{r['highpass']:.1f}" for r in rows[1:]) + " |\n\n"
            + "![filtered accuracy](hat/hat_filtered_accuracy.png)\n")
