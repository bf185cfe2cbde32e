"""Image folders users bring: ``root/train/<class>/*.png|jpg|...`` and ``root/val`` (or ``root/test``) alike.

Class names are the sub-folder names of ``root/train``, sorted; label k is ``classes[k]``. Images are read when an
item is asked for: an unreadable file is a :class:`DataError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vitlab.data.dataset import DataError
from vitlab.data.transforms import TrainTransform, pil_to_unit_tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_FOLDER_LAYOUT = (
    "expected layout: ROOT/train/<class>/<image>.png|jpg|... and ROOT/val/<class>/... (or ROOT/test/<class>/...), "
    "one sub-folder per class"
)


def split_folder(root: Path, split: str) -> Path:
    """The folder of ``split``: train -> root/train; test or val -> root/<split>, else the other of the two."""
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found; {IMAGE_FOLDER_LAYOUT}")
    if split == "train":
        candidates = ["train"]
    elif split in ("test", "val"):
        candidates = [split, "val" if split == "test" else "test"]
    else:
        raise DataError(f"image_folder: unknown split {split!r} (allowed: train, test, val)")
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root / candidates[0]}: folder not found; {IMAGE_FOLDER_LAYOUT}")


def list_classes(train_dir: Path) -> list[str]:
    classes = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(f"{train_dir}: no class sub-folders; {IMAGE_FOLDER_LAYOUT}")
    return classes


def list_images(folder: Path, classes: Sequence[str], require_every_class: bool) -> tuple[list[Path], list[int]]:
    """Image paths under ``folder/<class>/`` (searched recursively, sorted) and their labels."""
    known = set(classes)
    for entry in os.scandir(folder):
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in known:
            raise DataError(f"{Path(entry.path)}: class {entry.name!r} is not among the training classes "
                            f"(sub-folders of the train folder); {IMAGE_FOLDER_LAYOUT}")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        found = []
        if class_dir.is_dir():
            for dirpath, dirnames, filenames in os.walk(class_dir):
                dirnames.sort()
                found += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found and require_every_class:
            raise DataError(f"{class_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}); {IMAGE_FOLDER_LAYOUT}")
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}); {IMAGE_FOLDER_LAYOUT}")
    return paths, labels


def resize_and_centre_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bilinear, anti-aliased), then the central ``size`` x ``size`` square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample=Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageFolderDataset(Dataset[dict[str, Any]]):
    """Images read from files; item ``{"image": (C, img_size, img_size) float in [0, 1], "label": int}``.

    ``mean`` / ``std`` default to ImageNet's (their average for one channel); pass statistics computed on the
    training images (:func:`vitlab.data.dataset.channel_stats`) to use those instead.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        targets: Sequence[int],
        classes: Sequence[str],
        img_size: int,
        channels: int,
        transform: TrainTransform | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.img_size = img_size
        self.channels = channels
        self.transform = transform
        default_mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
        default_std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
        self.mean = tuple(mean) if mean is not None else default_mean
        self.std = tuple(std) if std is not None else default_std

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        """The image file at ``index``, converted to L or RGB and resized / centre-cropped to ``img_size``."""
        path = self.paths[index]
        try:
            with Image.open(path) as handle:
                image = handle.convert("L" if self.channels == 1 else "RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"{path}: cannot read this image ({type(exc).__name__}: {exc}); expected an image file "
                            f"({', '.join(IMAGE_EXTENSIONS)}); {IMAGE_FOLDER_LAYOUT}") from None
        return resize_and_centre_crop(image, self.img_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.load(index)
        tensor = self.transform(image) if self.transform is not None else pil_to_unit_tensor(image)
        return {"image": tensor, "label": self.targets[index]}
