"""``build_dataset``: from a :class:`~vitlab.config.DataConfig` and a split name to a dataset, through a registry.

Other data sets (the derived sets of the method specs) join with :func:`register_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vitlab.config import DataConfig
from vitlab.data.cifar import CIFAR_STATS, read_cifar, rgb_to_grey
from vitlab.data.dataset import DataError, TensorImageDataset, channel_stats, keep_first_per_class
from vitlab.data.digits import DIGITS_CLASSES, load_digits_split
from vitlab.data.foolbox import FOOLBOX_SETS, build_foolbox
from vitlab.data.glyphs import (
    GLYPH_CLASSES,
    GLYPH_FONTS,
    GlyphDataset,
    GlyphRenders,
    classification_indices,
    fewshot_classes,
    load_glyph_renders,
)
from vitlab.data.image_folder import ImageFolderDataset, list_classes, list_images, split_folder
from vitlab.data.transforms import TrainTransform

DatasetBuilder = Callable[[DataConfig, str, bool], Dataset[dict[str, Any]]]
_BUILDERS: dict[str, DatasetBuilder] = {}

# Few-shot split aliases, so that a loop that asks for "train" / "test" gets the base / novel classes.
FEWSHOT_ALIASES = {"train": "base", "test": "novel"}


def register_dataset(name: str, builder: DatasetBuilder) -> None:
    """Make ``data.name: <name>`` build with ``builder(cfg, split, train)``."""
    _BUILDERS[name] = builder


def _import_registering_modules() -> None:
    """The modules of this package that register more sets (video, few-shot formats); imported on first lookup, as
    ``vitlab.data`` itself imports nothing on import."""
    from vitlab.data import fewshot_formats, video_sets  # noqa: F401


def dataset_names() -> list[str]:
    _import_registering_modules()
    return sorted(_BUILDERS)


def build_dataset(cfg: DataConfig, split: str, train: bool) -> Dataset[dict[str, Any]]:
    """The ``split`` of the data set ``cfg.name``; ``train=True`` adds the training augmentation of ``cfg.aug``.

    Items are ``{"image": FloatTensor (C, img_size, img_size) in [0, 1], "label": int}``. The dataset exposes
    ``classes``, ``num_classes``, ``targets`` and per-channel ``mean`` / ``std`` (for the model's normalisation).
    Splits: "train" / "test" for classification sets, "base" / "val" / "novel" for ``glyphs_fewshot``.
    ``cfg.train_per_class`` keeps, in the training split only, the first N images per class after a fixed shuffle.
    """
    _import_registering_modules()
    if cfg.name not in _BUILDERS:
        raise DataError(f"data.name: unknown data set {cfg.name!r} (allowed: {', '.join(dataset_names())})")
    if cfg.channels not in (1, 3):
        raise DataError(f"data.channels: got {cfg.channels}, expected 1 or 3")
    if cfg.img_size < 8:
        raise DataError(f"data.img_size: got {cfg.img_size}, expected an integer >= 8")
    return _BUILDERS[cfg.name](cfg, split, train)


def _train_transform(cfg: DataConfig, train: bool, mean: Sequence[float],
                     std: Sequence[float]) -> TrainTransform | None:
    if not train or not TrainTransform.is_active(cfg.aug):
        return None
    return TrainTransform(cfg.aug, cfg.img_size, cfg.channels, mean, std)


def _repeat_stats(stats: tuple[float, ...], channels: int) -> tuple[float, ...]:
    return stats * channels if len(stats) == 1 else stats


def _tensor_dataset(cfg: DataConfig, train: bool, images: Tensor, targets: Sequence[int], classes: Sequence[str],
                    mean: tuple[float, ...], std: tuple[float, ...], subset: bool) -> TensorImageDataset:
    """Wrap single-channel (or CIFAR RGB) images, applying ``train_per_class`` when ``subset`` is set."""
    if subset and cfg.train_per_class is not None:
        keep = keep_first_per_class(targets, cfg.train_per_class)
        images, targets = images[torch.as_tensor(keep)], [targets[i] for i in keep]
    mean, std = _repeat_stats(mean, cfg.channels), _repeat_stats(std, cfg.channels)
    return TensorImageDataset(images, targets, classes, cfg.img_size, cfg.channels, mean, std,
                              _train_transform(cfg, train, mean, std))


def build_digits(cfg: DataConfig, split: str, train: bool) -> TensorImageDataset:
    """``digits`` (specs/data.md): mean / std from the training split at ``img_size``."""
    if split not in ("train", "test"):
        raise DataError(f"digits: unknown split {split!r} (allowed: train, test)")
    data = load_digits_split(cfg.img_size)
    mean, std = channel_stats(data.train_images)
    if split == "train":
        images, labels = data.train_images, data.train_labels
    else:
        images, labels = data.test_images, data.test_labels
    return _tensor_dataset(cfg, train, images, labels.tolist(), DIGITS_CLASSES, mean, std, subset=split == "train")


DIGITS_BASE = (0, 1, 2, 3, 4)  # specs/sun.md §6: 5 base digits, 5 novel digits
DIGITS_NOVEL = (5, 6, 7, 8, 9)


def build_digits_fewshot(cfg: DataConfig, split: str, train: bool) -> TensorImageDataset:
    """``digits_fewshot`` (specs/sun.md §6): class-disjoint base {0..4} / novel {5..9}.

    "base" is the base digits of the digits training split, "base_test" the base digits of its test split, "novel"
    every image of the novel digits. Labels are re-numbered 0..4 within the split (``classes`` gives the digits);
    mean / std come from "base". "train" and "test" are accepted for "base" and "novel".
    """
    split = FEWSHOT_ALIASES.get(split, split)
    if split not in ("base", "base_test", "novel"):
        raise DataError(f"digits_fewshot: unknown split {split!r} (allowed: base, base_test, novel; train = base, "
                        "test = novel)")
    data = load_digits_split(cfg.img_size)
    base_mask = torch.isin(data.train_labels, torch.tensor(DIGITS_BASE))
    mean, std = channel_stats(data.train_images[base_mask])
    if split == "novel":
        images, labels = torch.cat([data.train_images, data.test_images]), torch.cat([data.train_labels,
                                                                                      data.test_labels])
        chosen = DIGITS_NOVEL
    else:
        images, labels = (data.train_images, data.train_labels) if split == "base" else (data.test_images,
                                                                                          data.test_labels)
        chosen = DIGITS_BASE
    keep = torch.isin(labels, torch.tensor(chosen))
    targets = [chosen.index(int(v)) for v in labels[keep]]
    return _tensor_dataset(cfg, train, images[keep], targets, [DIGITS_CLASSES[d] for d in chosen], mean, std,
                           subset=split == "base")


def _glyph_dataset(cfg: DataConfig, train: bool, renders: GlyphRenders, indices: np.ndarray,
                   stats_indices: np.ndarray, label_map: dict[int, int] | None, subset: bool) -> GlyphDataset:
    images = torch.from_numpy(renders.images)
    mean, std = channel_stats(images[torch.from_numpy(stats_indices)])
    labels = renders.labels[indices].tolist()
    classes = list(GLYPH_CLASSES)
    if label_map is not None:
        labels = [label_map[v] for v in labels]
        classes = [GLYPH_CLASSES[k] for k in sorted(label_map, key=label_map.__getitem__)]
    font_names = [GLYPH_FONTS[f] for f in renders.fonts[indices]]
    if subset and cfg.train_per_class is not None:
        keep = keep_first_per_class(labels, cfg.train_per_class)
        indices, labels, font_names = indices[keep], [labels[i] for i in keep], [font_names[i] for i in keep]
    mean, std = _repeat_stats(mean, cfg.channels), _repeat_stats(std, cfg.channels)
    return GlyphDataset(images[torch.from_numpy(indices)], labels, classes, cfg.img_size, cfg.channels, mean, std,
                        _train_transform(cfg, train, mean, std), fonts=font_names)


def build_glyphs(cfg: DataConfig, split: str, train: bool) -> GlyphDataset:
    """``glyphs``: 136 classes, font-disjoint train / test; mean / std from the training split.

    ``fonts`` holds the font name of every image.
    """
    renders = load_glyph_renders(cfg.glyphs.render_seed)
    indices = classification_indices(renders, split, cfg.glyphs.test_fonts)
    train_indices = classification_indices(renders, "train", cfg.glyphs.test_fonts)
    return _glyph_dataset(cfg, train, renders, indices, train_indices, None, split == "train")


def build_glyphs_fewshot(cfg: DataConfig, split: str, train: bool) -> GlyphDataset:
    """``glyphs_fewshot``: class-disjoint base / val / novel (80 / 16 / 40 classes), every font.

    Labels are re-numbered 0..K-1 within the split (``classes`` gives the characters); mean / std come from base.
    "train" and "test" are accepted for "base" and "novel".
    """
    split = FEWSHOT_ALIASES.get(split, split)
    splits = fewshot_classes()
    if split not in splits:
        raise DataError(f"glyphs_fewshot: unknown split {split!r} (allowed: base, val, novel; train = base, "
                        "test = novel)")
    renders = load_glyph_renders(cfg.glyphs.render_seed)
    chosen = splits[split]
    indices = np.flatnonzero(np.isin(renders.labels, chosen))
    base_indices = np.flatnonzero(np.isin(renders.labels, splits["base"]))
    label_map = {label: k for k, label in enumerate(chosen)}
    return _glyph_dataset(cfg, train, renders, indices, base_indices, label_map, split == "base")


def build_glyphs_novel(cfg: DataConfig, split: str, train: bool) -> GlyphDataset:
    """``glyphs_novel``: the 40 novel classes of the few-shot split, font-disjoint train / test (k-NN and linear probe
    on classes a model never saw, e.g. after self-supervised pretraining on the base classes)."""
    if split not in ("train", "test"):
        raise DataError(f"glyphs_novel: unknown split {split!r} (allowed: train, test)")
    renders = load_glyph_renders(cfg.glyphs.render_seed)
    classes = fewshot_classes()
    indices = classification_indices(renders, split, cfg.glyphs.test_fonts)
    indices = indices[np.isin(renders.labels[indices], classes["novel"])]
    base_indices = np.flatnonzero(np.isin(renders.labels, classes["base"]))
    label_map = {label: k for k, label in enumerate(classes["novel"])}
    return _glyph_dataset(cfg, train, renders, indices, base_indices, label_map, split == "train")


def build_image_folder(cfg: DataConfig, split: str, train: bool) -> ImageFolderDataset:
    """``image_folder``: ``root/train/<class>/*`` and ``root/val`` or ``root/test``; ImageNet mean / std.

    A folder with none of train / val / test is a test-only set, ``root/<class>/*`` (its splits other than train;
    the sorted class folders give the labels, and a class folder may be empty).
    """
    if cfg.root is None:
        raise DataError("data.root: image_folder needs the folder that holds train/ and val/ (or test/)")
    root = Path(cfg.root).expanduser()
    if split != "train" and root.is_dir() and not any((root / s).is_dir() for s in ("train", "val", "test")):
        train_dir = folder = root  # a test-only folder: ROOT/<class>/*
    else:
        train_dir = split_folder(root, "train")
        folder = split_folder(root, split)
    classes = list_classes(train_dir)
    test_only = folder == train_dir and split != "train"  # a test set may lack some classes
    paths, targets = list_images(folder, classes, require_every_class=folder == train_dir and not test_only)
    if split == "train" and cfg.train_per_class is not None:
        keep = keep_first_per_class(targets, cfg.train_per_class)
        paths, targets = [paths[i] for i in keep], [targets[i] for i in keep]
    dataset = ImageFolderDataset(paths, targets, classes, cfg.img_size, cfg.channels)
    dataset.transform = _train_transform(cfg, train, dataset.mean, dataset.std)
    return dataset


def _build_cifar(name: str) -> DatasetBuilder:
    def build(cfg: DataConfig, split: str, train: bool) -> TensorImageDataset:
        images, labels, classes = read_cifar(name, cfg.root, split)
        if cfg.channels == 1:
            images = rgb_to_grey(images)
            # No standard grey statistics exist: compute them from the training images.
            train_images = images if split == "train" else rgb_to_grey(read_cifar(name, cfg.root, "train")[0])
            mean, std = channel_stats(torch.from_numpy(train_images))
        else:
            mean, std = CIFAR_STATS[name]
        return _tensor_dataset(cfg, train, torch.from_numpy(images), labels, classes, mean, std,
                               subset=split == "train")

    build.__doc__ = f"``{name}`` from the python pickles; the standard per-channel mean / std."
    return build


register_dataset("digits", build_digits)
register_dataset("digits_fewshot", build_digits_fewshot)
register_dataset("glyphs", build_glyphs)
register_dataset("glyphs_fewshot", build_glyphs_fewshot)
register_dataset("glyphs_novel", build_glyphs_novel)
register_dataset("image_folder", build_image_folder)
register_dataset("cifar10", _build_cifar("cifar10"))
register_dataset("cifar100", _build_cifar("cifar100"))
for _name in FOOLBOX_SETS:
    register_dataset(_name, build_foolbox(_name))
