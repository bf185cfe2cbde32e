"""Shared by the command tests of analysis/: a one-step run of a tiny recipe through ``vitlab train``."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitlab.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def train_one_step(recipe: str, out: Path, img_size: int, *extra: str) -> Path:
    """``vitlab train -c recipes/RECIPE`` for one step of a depth-1 model at ``img_size`` px; its ``last.ckpt``."""
    sets = [f"out_dir={out}", "name=tiny", "train.max_steps=1", "train.epochs=1", f"data.img_size={img_size}",
            f"model.kwargs.img_size={img_size}", "model.kwargs.depth=1", "data.batch_size=16",
            "data.aug.rand_augment=null", "train.progress=false", *extra]
    rc = main(["train", "-c", str(RECIPES / recipe), *[a for s in sets for a in ("--set", s)]])
    assert rc == 0
    return out / "tiny" / "last.ckpt"


@pytest.fixture(scope="session")
def one_step_checkpoint():
    """:func:`train_one_step`, for the module-scoped checkpoint fixtures of the command tests."""
    return train_one_step
