"""Data: bundled sets built offline from installed wheels, readers for real formats, training transforms.

``build_dataset(cfg, split, train)`` returns items ``{"image": (C, H, W) float in [0, 1], "label": int}``; see
docs/data.md for the sets, the layouts of user data and the cache.

The names below are imported on first use, so that ``vitlab.data.catalog`` (the ``--data`` flags of the command
line) imports neither torch nor the readers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names as type checkers see them; at run time they are imported on first use
    from vitlab.data.build import build_dataset, dataset_names, register_dataset
    from vitlab.data.cache import cache_dir
    from vitlab.data.dataset import DataError, TensorImageDataset, channel_stats, keep_first_per_class
    from vitlab.data.digits import DigitsSplit, load_digits_split
    from vitlab.data.glyphs import GLYPH_CLASSES, GLYPH_FONTS, TEST_FONTS, GlyphDataset, fewshot_classes, render_glyph
    from vitlab.data.image_folder import ImageFolderDataset
    from vitlab.data.transforms import TrainTransform, build_mixup

_EXPORTS = {
    "GLYPH_CLASSES": "vitlab.data.glyphs",
    "GLYPH_FONTS": "vitlab.data.glyphs",
    "TEST_FONTS": "vitlab.data.glyphs",
    "DataError": "vitlab.data.dataset",
    "DigitsSplit": "vitlab.data.digits",
    "GlyphDataset": "vitlab.data.glyphs",
    "ImageFolderDataset": "vitlab.data.image_folder",
    "TensorImageDataset": "vitlab.data.dataset",
    "TrainTransform": "vitlab.data.transforms",
    "build_dataset": "vitlab.data.build",
    "build_mixup": "vitlab.data.transforms",
    "cache_dir": "vitlab.data.cache",
    "channel_stats": "vitlab.data.dataset",
    "dataset_names": "vitlab.data.build",
    "fewshot_classes": "vitlab.data.glyphs",
    "keep_first_per_class": "vitlab.data.dataset",
    "load_digits_split": "vitlab.data.digits",
    "register_dataset": "vitlab.data.build",
    "render_glyph": "vitlab.data.glyphs",
}
__all__ = [
    "GLYPH_CLASSES",
    "GLYPH_FONTS",
    "TEST_FONTS",
    "DataError",
    "DigitsSplit",
    "GlyphDataset",
    "ImageFolderDataset",
    "TensorImageDataset",
    "TrainTransform",
    "build_dataset",
    "build_mixup",
    "cache_dir",
    "channel_stats",
    "dataset_names",
    "fewshot_classes",
    "keep_first_per_class",
    "load_digits_split",
    "register_dataset",
    "render_glyph",
]


def __getattr__(name: str) -> object:
    """``vitlab.data.build_dataset`` and the other names of ``__all__``, imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitlab.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
