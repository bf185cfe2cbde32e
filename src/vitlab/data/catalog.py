"""What ``--data`` accepts: the bundled sets (with their sizes and classes, recorded here so listing them reads
nothing), the formats a user brings with ``--data-root``, and any set a plugin registered.

``vitlab data`` prints :func:`catalog_lines`; every command that reads data takes :func:`add_data_arguments`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["BUNDLED", "USER_FORMATS", "DataSetEntry", "add_data_arguments", "catalog_lines", "data_config"]


@dataclass(frozen=True)
class DataSetEntry:
    """One ``data.name``: its splits and their sizes (None for a user's set), classes and stored image size."""

    name: str
    splits: dict[str, int] | None
    classes: int | None
    size: str  # the stored images, C x H x W (resized to data.img_size on load)
    what: str


BUNDLED = (
    DataSetEntry("digits", {"train": 1438, "test": 359}, 10, "1x8x8",
                 "scikit-learn's real handwritten digits, a fixed seeded split"),
    DataSetEntry("digits_fewshot", {"base": 721, "base_test": 180, "novel": 896}, 5, "1x8x8",
                 "digits 0-4 (base) / 5-9 (novel), class-disjoint"),
    DataSetEntry("glyphs", {"train": 8312, "test": 940}, 136, "1x32x32",
                 "characters rendered from matplotlib's fonts, font-disjoint test split"),
    DataSetEntry("glyphs_fewshot", {"base": 5984, "val": 1192, "novel": 3016}, 136, "1x32x32",
                 "glyphs, class-disjoint base 80 / val 16 / novel 40 classes"),
    DataSetEntry("glyphs_novel", {"train": 2460, "test": 278}, 40, "1x32x32",
                 "the 40 novel glyph classes, font-disjoint train / test"),
    DataSetEntry("moving_digits", {"train": 5752, "test": 359}, 4, "1x16x32x32",
                 "videos of moving digits (label: motion), 16 frames"),
    DataSetEntry("digits_zsl", {"trainval": 1011, "test_seen": 253, "test_unseen": 106}, 10, "1x8x8",
                 "digits as a zero-shot set: 7 seen / 3 unseen digits, 12 attributes (TransZero++)"),
    DataSetEntry("synth_sentiment", {"train": 2000, "val": 200, "test": 500}, 2, "text",
                 "synonym-controlled sentiment sentences (RIFT)"),
    DataSetEntry("foolbox-cifar10", {"test": 20}, 10, "3x32x32", "20 real CIFAR-10 test images (foolbox wheel)"),
    DataSetEntry("foolbox-cifar100", {"test": 20}, 100, "3x32x32", "20 real CIFAR-100 test images (foolbox wheel)"),
    DataSetEntry("foolbox-mnist", {"test": 20}, 10, "1x28x28", "20 real MNIST test images (foolbox wheel)"),
    DataSetEntry("foolbox-fashionmnist", {"test": 20}, 10, "1x28x28",
                 "20 real Fashion-MNIST test images (foolbox wheel)"),
    DataSetEntry("foolbox_cifar10", {"test": 20}, 10, "3x32x32", "foolbox-cifar10 under the quant checks' name"),
)

USER_FORMATS = (
    DataSetEntry("image_folder", None, None, "any", "--data-root DIR: DIR/train/<class>/*.png|jpg and DIR/val (or "
                 "test)/<class>/...; or DIR/<class>/... alone for a test-only folder"),
    DataSetEntry("cifar10", None, 10, "3x32x32", "--data-root DIR: the python pickles (cifar-10-batches-py)"),
    DataSetEntry("cifar100", None, 100, "3x32x32", "--data-root DIR: the python pickles (cifar-100-python)"),
    DataSetEntry("video_folder", None, None, "any", "--data-root DIR: train.csv / val.csv lists of videos or frame "
                 "folders"),
    DataSetEntry("mini_imagenet", None, None, "any", "--data-root DIR: few-shot image folders or CSV splits"),
    DataSetEntry("tiered_imagenet", None, None, "any", "--data-root DIR: few-shot image folders or CSV splits"),
    DataSetEntry("cifar_fs", None, None, "3x32x32", "--data-root DIR: CIFAR-100 pickles cut into few-shot splits"),
)


def _entries() -> dict[str, DataSetEntry]:
    return {e.name: e for e in BUNDLED + USER_FORMATS}


def data_names_help() -> str:
    """The ``--data`` help: every bundled set, then the user formats."""
    bundled = ", ".join(e.name for e in BUNDLED if e.name != "foolbox_cifar10")
    user = ", ".join(e.name for e in USER_FORMATS)
    return f"bundled: {bundled}; with --data-root: {user} (`vitlab data` lists sizes and classes)"


def catalog_lines() -> list[str]:
    """``vitlab data``: one line per set: name, splits with sizes, classes, stored size, what it is."""
    from vitlab.data import dataset_names

    known = _entries()
    lines = [f"{'data.name':<22}{'splits (images)':<38}{'classes':>8}  {'stored':<11}what"]
    for entry in BUNDLED + USER_FORMATS:
        splits = ", ".join(f"{k} {v:,}" for k, v in entry.splits.items()) if entry.splits else "(your data)"
        classes = str(entry.classes) if entry.classes is not None else "-"
        lines.append(f"{entry.name:<22}{splits:<38}{classes:>8}  {entry.size:<11}{entry.what}")
    others = [name for name in dataset_names() if name not in known]
    for name in others:
        lines.append(f"{name:<22}{'(registered by a plugin)':<38}{'-':>8}  {'-':<11}")
    return lines


def add_data_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str | None = None,
                       data_flag: bool = True) -> None:
    """``--data NAME`` (every bundled set named in the help) and ``--data-root DIR`` (a user's folder)."""
    if data_flag:
        parser.add_argument("--data", default=None,
                            help=f"data set (default: {default or 'that of the checkpoint'}); " + data_names_help())
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="folder of your data for --data image_folder | cifar10 | cifar100 | video_folder | "
                             "mini_imagenet | tiered_imagenet | cifar_fs (sets data.root)")


def data_config(args: argparse.Namespace, base: Any = None, name: str | None = None) -> Any:
    """``base`` (a :class:`~vitlab.config.DataConfig`, default a fresh one) with ``--data`` / ``--data-root``."""
    from vitlab.config import DataConfig

    cfg = base if base is not None else DataConfig()
    name = name or getattr(args, "data", None) or cfg.name
    root = getattr(args, "data_root", None)
    return dataclasses.replace(cfg, name=name, root=root if root is not None else (cfg.root if name == cfg.name
                                                                                   else None))
