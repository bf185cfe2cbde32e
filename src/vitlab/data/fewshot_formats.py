"""Few-shot benchmark layouts users bring: miniImageNet, tieredImageNet, CIFAR-FS (specs/sun.md §2.7).

Each set has class-disjoint splits; vitlab names them base / val / novel ("train" and "test" are accepted, as the
files are named). Layouts read, detected from the files under ``data.root``:

- **image folder + split CSVs** (miniImageNet as Ravi & Larochelle ship it; tieredImageNet alike):
  ``ROOT/{train,val,test}.csv`` with the header ``filename,label`` and the images in ``ROOT/images/<filename>``.
- **miniImageNet pickle cache**: ``ROOT/mini-imagenet-cache-{train,val,test}.pkl``, a dict with ``image_data``
  (N, H, W, 3) uint8 and ``class_dict`` {class name: [row indices]}.
- **tieredImageNet npz**: ``ROOT/{train,val,test}_images.npz`` (array ``images`` (N, H, W, 3) uint8) and
  ``ROOT/{train,val,test}_labels.pkl`` (dict with ``label_specific`` (N,) ints, optionally ``label_specific_str``).
- **CIFAR-FS**: the CIFAR-100 python pickles (``ROOT/cifar-100-python/{train,test,meta}``; all 600 images of a class,
  train and test files together) and the split files ``{train,val,test}.txt`` (one fine-label class name per line)
  in ``ROOT/splits/bertinetto/`` or ``ROOT/``.

Labels are re-numbered 0..K-1 within a split, in sorted class-name order. Pickles are read with an unpickler that
admits only numpy arrays and plain containers. A missing or malformed file is a one-line :class:`DataError` naming it.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitlab.config import DataConfig
from vitlab.data.build import FEWSHOT_ALIASES, _train_transform, register_dataset
from vitlab.data.cifar import CIFAR_STATS, _ArraysOnlyUnpickler, read_cifar
from vitlab.data.dataset import DataError, TensorImageDataset
from vitlab.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset

SPLIT_FILES = {"base": "train", "val": "val", "novel": "test"}  # vitlab split -> the file name stem of every layout

CSV_LAYOUT = "ROOT/{train,val,test}.csv with the header 'filename,label' and the images in ROOT/images/"
MINI_PICKLE_LAYOUT = "ROOT/mini-imagenet-cache-{train,val,test}.pkl (dict with 'image_data' and 'class_dict')"
TIERED_NPZ_LAYOUT = ("ROOT/{train,val,test}_images.npz (array 'images') with ROOT/{train,val,test}_labels.pkl "
                     "(dict with 'label_specific')")
CIFAR_FS_LAYOUT = ("ROOT/cifar-100-python/{train,test,meta} and ROOT/splits/bertinetto/{train,val,test}.txt "
                   "(or ROOT/{train,val,test}.txt), one CIFAR-100 class name per line")


def split_stem(name: str, split: str) -> str:
    """The file stem ("train" / "val" / "test") of a vitlab split name."""
    split = FEWSHOT_ALIASES.get(split, split)
    if split not in SPLIT_FILES:
        raise DataError(f"{name}: unknown split {split!r} (allowed: base, val, novel; train = base, test = novel)")
    return SPLIT_FILES[split]


def read_split_csv(csv_path: Path, image_dir: Path) -> tuple[list[Path], list[int], list[str]]:
    """Paths, labels (0..K-1, sorted class names) and class names of one ``filename,label`` split file.

    Every listed image must exist: the first missing one is an error naming it.
    """
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: file not found; expected layout: {CSV_LAYOUT}")
    with csv_path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
            raise DataError(f"{csv_path}: expected the header 'filename,label', found {header}")
        rows = [(r[0].strip(), r[1].strip()) for r in reader if r]
    if not rows:
        raise DataError(f"{csv_path}: no images listed")
    classes = sorted({label for _, label in rows})
    index = {name: k for k, name in enumerate(classes)}
    paths = []
    for line, (filename, _) in enumerate(rows, start=2):
        path = image_dir / filename
        if not path.is_file():
            raise DataError(f"{path}: image not found (listed on line {line} of {csv_path})")
        paths.append(path)
    return paths, [index[label] for _, label in rows], classes


def load_pickle(path: Path, layout: str) -> Any:
    """A pickle of numpy arrays and plain containers (Python 2 pickles included), or a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected layout: {layout}")
    try:
        with path.open("rb") as handle:
            return _ArraysOnlyUnpickler(io.BufferedReader(handle), encoding="latin1").load()
    except Exception as exc:  # a damaged or foreign pickle raises almost any exception type
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); expected layout: "
                        f"{layout}") from None


def _images_nhwc(array: Any, path: Path, layout: str) -> np.ndarray:
    images = np.asarray(array)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: images are {images.dtype} {images.shape}, expected uint8 (N, H, W, 3); "
                        f"expected layout: {layout}")
    return images


def read_mini_pickle(path: Path) -> tuple[np.ndarray, list[int], list[str]]:
    """Images (N, H, W, 3) uint8, labels and sorted class names of a ``mini-imagenet-cache-*.pkl`` file."""
    data = load_pickle(path, MINI_PICKLE_LAYOUT)
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected a dict with 'image_data' and 'class_dict', found {keys}")
    images = _images_nhwc(data["image_data"], path, MINI_PICKLE_LAYOUT)
    classes = sorted(str(c) for c in data["class_dict"])
    labels = np.full(len(images), -1, dtype=np.int64)
    for k, name in enumerate(classes):
        rows = np.asarray(data["class_dict"][name], dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(images)):
            raise DataError(f"{path}: class_dict[{name!r}] lists rows outside 0..{len(images) - 1}")
        labels[rows] = k
    if (labels < 0).any():
        raise DataError(f"{path}: {int((labels < 0).sum())} rows of image_data belong to no class of class_dict")
    return images, labels.tolist(), classes


def read_tiered_npz(images_path: Path, labels_path: Path) -> tuple[np.ndarray, list[int], list[str]]:
    """Images, labels (0..K-1) and class names of a tieredImageNet ``*_images.npz`` / ``*_labels.pkl`` pair."""
    if not images_path.is_file():
        raise DataError(f"{images_path}: file not found; expected layout: {TIERED_NPZ_LAYOUT}")
    try:
        with np.load(images_path, allow_pickle=False) as archive:
            key = "images" if "images" in archive.files else (archive.files[0] if len(archive.files) == 1 else None)
            if key is None:
                raise DataError(f"{images_path}: no array 'images' (found {archive.files}); expected layout: "
                                f"{TIERED_NPZ_LAYOUT}")
            images = _images_nhwc(archive[key], images_path, TIERED_NPZ_LAYOUT)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{images_path}: not a readable npz ({type(exc).__name__}: {exc})") from None
    meta = load_pickle(labels_path, TIERED_NPZ_LAYOUT)
    if not isinstance(meta, dict) or "label_specific" not in meta:
        raise DataError(f"{labels_path}: expected a dict with 'label_specific'; expected layout: {TIERED_NPZ_LAYOUT}")
    raw = np.asarray(meta["label_specific"], dtype=np.int64).reshape(-1)
    if len(raw) != len(images):
        raise DataError(f"{labels_path}: {len(raw)} labels for the {len(images)} images of {images_path}")
    present, labels = np.unique(raw, return_inverse=True)
    names = meta.get("label_specific_str")
    classes = ([str(names[v]) for v in present] if names is not None and len(names) > present.max()
               else [str(v) for v in present])
    return images, labels.tolist(), classes


def read_cifar_fs(root: Path, split_name: str) -> tuple[np.ndarray, list[int], list[str]]:
    """Images (N, 3, 32, 32) uint8 of the CIFAR-100 classes listed in the CIFAR-FS split file ``split_name``.txt."""
    candidates = [root / "splits" / "bertinetto" / f"{split_name}.txt", root / f"{split_name}.txt"]
    split_file = next((p for p in candidates if p.is_file()), None)
    if split_file is None:
        raise DataError(f"{candidates[0]}: file not found (nor {candidates[1]}); expected layout: {CIFAR_FS_LAYOUT}")
    wanted = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    train_images, train_labels, names = read_cifar("cifar100", root, "train")
    test_images, test_labels, _ = read_cifar("cifar100", root, "test")
    known = {name: k for k, name in enumerate(names)}
    for name in wanted:
        if name not in known:
            raise DataError(f"{split_file}: class {name!r} is not a CIFAR-100 fine label")
    classes = sorted(wanted)
    images = np.concatenate([train_images, test_images])
    source = np.asarray(train_labels + test_labels)
    remap = np.full(len(names), -1, dtype=np.int64)
    for k, name in enumerate(classes):
        remap[known[name]] = k
    labels = remap[source]
    keep = labels >= 0
    return images[keep], labels[keep].tolist(), classes


def _array_dataset(cfg: DataConfig, train: bool, images: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                   mean: Sequence[float], std: Sequence[float]) -> TensorImageDataset:
    if cfg.channels != 3:
        raise DataError(f"data.channels: got {cfg.channels}; the few-shot benchmark sets are RGB, expected 3")
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    return TensorImageDataset(tensor, labels, classes, cfg.img_size, 3, mean, std,
                              _train_transform(cfg, train, mean, std))


def _root(cfg: DataConfig, name: str, layouts: str) -> Path:
    if cfg.root is None:
        raise DataError(f"data.root: {name} needs the folder of its files; expected layout: {layouts}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found; expected layout: {layouts}")
    return root


def _csv_dataset(cfg: DataConfig, train: bool, root: Path, stem: str) -> ImageFolderDataset:
    paths, labels, classes = read_split_csv(root / f"{stem}.csv", root / "images")
    dataset = ImageFolderDataset(paths, labels, classes, cfg.img_size, cfg.channels)
    dataset.transform = _train_transform(cfg, train, dataset.mean, dataset.std)
    return dataset


def build_mini_imagenet(cfg: DataConfig, split: str, train: bool) -> TensorImageDataset | ImageFolderDataset:
    """``mini_imagenet``: the pickle cache when ``mini-imagenet-cache-<split>.pkl`` is there, else the CSV layout."""
    stem = split_stem("mini_imagenet", split)
    root = _root(cfg, "mini_imagenet", f"{MINI_PICKLE_LAYOUT}, or {CSV_LAYOUT}")
    pickle_path = root / f"mini-imagenet-cache-{stem}.pkl"
    if pickle_path.is_file() or (not (root / f"{stem}.csv").is_file() and any(root.glob("mini-imagenet-cache-*"))):
        images, labels, classes = read_mini_pickle(pickle_path)
        return _array_dataset(cfg, train, images.transpose(0, 3, 1, 2), labels, classes, IMAGENET_MEAN, IMAGENET_STD)
    return _csv_dataset(cfg, train, root, stem)


def build_tiered_imagenet(cfg: DataConfig, split: str, train: bool) -> TensorImageDataset | ImageFolderDataset:
    """``tiered_imagenet``: the npz layout when ``<split>_images.npz`` is there, else the CSV layout."""
    stem = split_stem("tiered_imagenet", split)
    root = _root(cfg, "tiered_imagenet", f"{TIERED_NPZ_LAYOUT}, or {CSV_LAYOUT}")
    npz_path = root / f"{stem}_images.npz"
    if npz_path.is_file() or (not (root / f"{stem}.csv").is_file() and any(root.glob("*_images.npz"))):
        images, labels, classes = read_tiered_npz(npz_path, root / f"{stem}_labels.pkl")
        return _array_dataset(cfg, train, images.transpose(0, 3, 1, 2), labels, classes, IMAGENET_MEAN, IMAGENET_STD)
    return _csv_dataset(cfg, train, root, stem)


def build_cifar_fs(cfg: DataConfig, split: str, train: bool) -> TensorImageDataset:
    """``cifar_fs``: CIFAR-100 classes split 64 / 16 / 20 by the CIFAR-FS split files; CIFAR-100 mean / std."""
    stem = split_stem("cifar_fs", split)
    images, labels, classes = read_cifar_fs(_root(cfg, "cifar_fs", CIFAR_FS_LAYOUT), stem)
    mean, std = CIFAR_STATS["cifar100"]
    return _array_dataset(cfg, train, images, labels, classes, mean, std)


register_dataset("mini_imagenet", build_mini_imagenet)
register_dataset("tiered_imagenet", build_tiered_imagenet)
register_dataset("cifar_fs", build_cifar_fs)
