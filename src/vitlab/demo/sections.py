"""What every ``vitlab demo`` section shares: the section registry, bundled recipes, training-curve plots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


@dataclass
class DemoSection:
    name: str
    title: str
    run: Callable[[Path, bool], str]  # (section folder, quick) -> Markdown body
    seconds: float = 60.0  # expected wall time of the full section on 2 CPU cores (drives its progress bar)


SECTIONS: list[DemoSection] = []


def demo_section(name: str, title: str, seconds: float = 60.0
                 ) -> Callable[[Callable[[Path, bool], str]], Callable[[Path, bool], str]]:
    """Register ``fn(folder, quick) -> Markdown`` as the demo section ``name``; ``seconds`` is its expected wall
    time on 2 CPU cores (its progress bar)."""

    def wrap(fn: Callable[[Path, bool], str]) -> Callable[[Path, bool], str]:
        SECTIONS.append(DemoSection(name, title, fn, seconds))
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


def plot_compared_runs(runs: dict[str, Path], out_png: Path, title: str) -> None:
    """Training loss (left) and evaluation top-1 (right) against steps for several runs, from their metrics.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitlab.engine.logging import read_metrics

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(8, 3.2))
    for label, run_dir in runs.items():
        rows = read_metrics(run_dir)
        loss = [(r["step"], r["value"]) for r in rows if r["phase"] == "train" and r["name"] == "loss"]
        acc = [(r["step"], r["value"]) for r in rows if r["phase"] == "eval" and r["name"] == "top1"]
        if loss:
            ax_loss.plot(*zip(*loss), label=label)
        if acc:
            ax_acc.plot(*zip(*acc), "o-", label=label)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train loss")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("test top-1 (%)")
    ax_acc.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
