"""Data: bundled sets built offline from installed wheels, readers for real formats, training transforms.

``build_dataset(cfg, split, train)`` returns items ``{"image": (C, H, W) float in [0, 1], "label": int}``; see
docs/data.md for the sets, the layouts of user data and the cache.
"""

from vitlab.data import fewshot_formats as fewshot_formats  # noqa: F401  (mini_imagenet, tiered_imagenet, cifar_fs)
from vitlab.data import video_sets as video_sets  # noqa: E402,F401  (registers moving_digits, video_folder)
from vitlab.data.build import build_dataset, dataset_names, register_dataset
from vitlab.data.cache import cache_dir
from vitlab.data.dataset import DataError, TensorImageDataset, channel_stats, keep_first_per_class
from vitlab.data.digits import DigitsSplit, load_digits_split
from vitlab.data.glyphs import GLYPH_CLASSES, GLYPH_FONTS, TEST_FONTS, GlyphDataset, fewshot_classes, render_glyph
from vitlab.data.image_folder import ImageFolderDataset
from vitlab.data.transforms import TrainTransform, build_mixup

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
