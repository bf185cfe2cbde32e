"""``vitlab demo`` section: HAT against plain training of a tiny ViT on digits, and their frequency response."""

from __future__ import annotations

from pathlib import Path

from vitlab.demo.sections import demo_section, recipe_path

DEMO_EPOCHS = 10  # the recipes train 60 (40 of them with HAT's adversarial high-frequency pass)
DEMO_ADV_EPOCHS = 7  # HAT's adversarial epochs, at the same ratio (2/3)
DEMO_SIZE = 16


@demo_section("hat", "HAT: high-frequency adversarial training (tiny ViT on digits) and its frequency response",
              seconds=60)
def _hat_demo(folder: Path, quick: bool) -> str:
    import time

    from vitlab.analysis.frequency import filtered_accuracy, plot_filtered_accuracy
    from vitlab.config import load_config
    from vitlab.data import build_dataset
    from vitlab.engine.checkpoint import load_eval_model
    from vitlab.engine.trainer import train
    from vitlab.evaluation.robust import collect

    size = 8 if quick else DEMO_SIZE
    common = [f"out_dir={folder}", "train.progress=false", f"data.img_size={size}", f"model.kwargs.img_size={size}",
              "data.train_per_class=50", f"train.epochs={DEMO_EPOCHS}", f"train.eval_every={DEMO_EPOCHS}"]
    if quick:
        common += ["train.max_steps=2", "data.batch_size=16", "model.kwargs.depth=1", "data.aug.rand_augment=null"]
    radii = (1, 2, 4) if quick else (1, 2, 3, 4, 6, 8)
    rows, curves, x, y = [], {}, None, None
    for label, recipe, extra in (("HAT", "hat/vit_tiny_digits.yaml", [f"method.adv_epochs={DEMO_ADV_EPOCHS}"]),
                                 ("plain training (baseline)", "hat/vit_tiny_digits_baseline.yaml", [])):
        cfg = load_config(recipe_path(recipe), [*common, *extra])
        t0 = time.time()
        metrics = train(cfg, overwrite=True)
        seconds = time.time() - t0
        if x is None or y is None:
            x, y = collect(build_dataset(cfg.data, "test", train=False), 64 if quick else None)
        curves[label] = filtered_accuracy(load_eval_model(cfg.run_dir / "last.ckpt"), x, y, radii)
        rows.append((label, metrics["top1"], seconds))
    plot_filtered_accuracy(curves, folder / "hat_filtered_accuracy.png",
                           f"digits {size}x{size}: filtered test accuracy")
    first = next(iter(curves.values()))
    header = "| model | clean top-1 (%) | train time (s) | " + " | ".join(
        f"low r={r['radius']:g}" for r in first[1:]) + " | " + " | ".join(f"high r={r['radius']:g}" for r in first[1:])
    table = [header + " |", "|---|---|---|" + "---|" * (2 * (len(first) - 1))]
    for label, top1, seconds in rows:
        curve = curves[label][1:]
        table.append(f"| {label} | {top1:.2f} | {seconds:.0f} | " + " | ".join(f"{r['lowpass']:.1f}" for r in curve)
                     + " | " + " | ".join(f"{r['highpass']:.1f}" for r in curve) + " |")
    return ("HAT adds an adversarial pass that perturbs only the high frequencies of the input (and distils the clean "
            "model on it) to a ViT's training; the baseline is the same ViT trained the same way without it. Recipes "
            "`recipes/hat/vit_tiny_digits.yaml` and `vit_tiny_digits_baseline.yaml`, low-data regime (50 images per "
            f"class), {size}x{size}, "
            + ("shortened: --quick, 2 steps" if quick else f"{DEMO_EPOCHS} epochs instead of 60 "
               f"(HAT for {DEMO_ADV_EPOCHS})")
            + ". A run this short shows the frequency response, not HAT's accuracy gain, which needs the long "
            "schedule. Accuracy on low-pass / high-pass filtered test images (radius r in frequency bins; "
            "`vitlab analyze frequency --ckpt` gives the same for any checkpoint):\n\n"
            + "\n".join(table) + "\n\n![filtered accuracy](hat/hat_filtered_accuracy.png)\n")
