"""``vitlab demo``: a tour of the methods on bundled data, written as ``report.md`` with tables and plots.

Each method contributes a section with :func:`demo_section`; a section trains briefly with a bundled recipe and
returns Markdown. ``quick`` shortens every section (the tests use it).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitlab.config import load_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@dataclass
class DemoSection:
    name: str
    title: str
    run: Callable[[Path, bool], str]  # (section folder, quick) -> Markdown body


SECTIONS: list[DemoSection] = []


def demo_section(name: str, title: str) -> Callable[[Callable[[Path, bool], str]], Callable[[Path, bool], str]]:
    def wrap(fn: Callable[[Path, bool], str]) -> Callable[[Path, bool], str]:
        SECTIONS.append(DemoSection(name, title, fn))
        return fn

    return wrap


def recipe_path(relative: str) -> Path:
    """A bundled recipe, from the source tree (editable installs) or the current folder."""
    for base in (RECIPES, Path.cwd() / "recipes"):
        if (base / relative).is_file():
            return base / relative
    raise FileNotFoundError(f"recipe recipes/{relative} not found (run the demo from the vitlab source folder)")


def plot_training_curves(run_dir: Path, out_png: Path, title: str) -> None:
    """Training loss and evaluation top-1 against steps, from the run's metrics.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitlab.engine.logging import read_metrics

    rows = read_metrics(run_dir)
    loss = [(r["step"], r["value"]) for r in rows if r["phase"] == "train" and r["name"] == "loss"]
    acc = [(r["step"], r["value"]) for r in rows if r["phase"] == "eval" and r["name"] == "top1"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if loss:
        ax.plot(*zip(*loss), label="train loss", color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    if acc:
        ax2.plot(*zip(*acc), "o-", label="test top-1 (%)", color="tab:orange")
    ax2.set_ylabel("top-1 (%)")
    ax.set_title(title)
    fig.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


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


@demo_section("iformer", "iFormer against a same-size ViT (glyphs)")
def _iformer(folder: Path, quick: bool) -> str:
    from vitlab.engine.checkpoint import load_eval_model
    from vitlab.engine.trainer import train
    from vitlab.models.profile import model_info

    rows = []
    for recipe, label in (("supervised/test_iformer_glyphs.yaml", "test_iformer"),
                          ("supervised/vit_baseline_glyphs.yaml", "ViT, patch 4, width 160, depth 4")):
        overrides = [f"out_dir={folder}", "train.progress=false", "train.epochs=3"]
        if quick:
            overrides += ["train.epochs=1", "train.max_steps=4"]
        cfg = load_config(recipe_path(recipe), overrides)
        t0 = time.time()
        metrics = train(cfg, overwrite=True)
        trained = load_eval_model(cfg.run_dir / "last.ckpt")
        params = sum(p.numel() for p in trained.parameters())
        flops = model_info(cfg.model.name, img_size=32, num_classes=trained.num_classes, **cfg.model.kwargs)["flops"]
        rows.append(f"| {label} | {params / 1e6:.2f} M | {flops / 1e6:.1f} M | {cfg.train.epochs} | "
                    f"{metrics['top1']:.2f} | {time.time() - t0:.0f} |")
    return ("Both trained identically on glyphs (136 classes, test fonts unseen in training); a short run: the 3-seed "
            "comparison is in docs/iformer.md.\n\n"
            "| model | params | FLOPs (32x32) | epochs | test top-1 (%) | time (s) |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def run_demo(out: Path, quick: bool = False, sections: list[str] | None = None) -> Path:
    """Run the tour (or the named sections) and write ``out/report.md``; returns its path."""
    import vitlab.methods  # noqa: F401  (methods register their demo sections on import)

    known = [s.name for s in SECTIONS]
    if sections:
        unknown = [s for s in sections if s not in known]
        if unknown:
            raise ValueError(f"--only: unknown section(s) {unknown} (available: {', '.join(known)})")
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# vitlab demo\n", "Every section trains on bundled data, offline, on this machine.\n"]
    for section in SECTIONS:
        if sections and section.name not in sections:
            continue
        folder = out / section.name
        folder.mkdir(parents=True, exist_ok=True)
        print(f"== {section.title}", flush=True)
        t0 = time.time()
        try:
            body = section.run(folder, quick)
        except Exception:
            body = "**This section failed:**\n\n```\n" + traceback.format_exc(limit=5) + "```\n"
            (out / "report.md").write_text("\n".join(parts + [f"## {section.title}\n", body]))
            raise
        parts.append(f"## {section.title}\n\n{body}\n_{time.time() - t0:.0f} s_\n")
    report = out / "report.md"
    report.write_text("\n".join(parts))
    return report
