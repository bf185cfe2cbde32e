"""CIFAR-10 / CIFAR-100 in the python pickle layout of the official archives.

``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``ROOT/cifar-100-python/{train, test, meta}``; ``ROOT`` may also be the batches folder itself. The pickles are read
with an unpickler that only admits numpy arrays and plain containers, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitlab.data.dataset import DataError

# The statistics of the training images of each set, per RGB channel (the population std, not the 0.2023-style
# values that circulate from a per-image computation).
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "batches.meta", "labels", "label_names"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names"),
}


def layout_text(name: str) -> str:
    layout = CIFAR_LAYOUTS[name]
    files = ", ".join(layout.train_files + layout.test_files + (layout.meta_file,))
    return (f"expected layout: ROOT/{layout.folder}/{{{files}}} (the python version of the official archive, "
            f"extracted), or ROOT pointing at {layout.folder} itself")


def batches_folder(name: str, root: str | Path | None) -> Path:
    """The folder holding the pickles, whether ``root`` is its parent or the folder itself."""
    if root is None:
        raise DataError(f"data.root: {name} needs the folder of the extracted archive; {layout_text(name)}")
    root = Path(root).expanduser()
    layout = CIFAR_LAYOUTS[name]
    for folder in (root / layout.folder, root):
        if (folder / layout.meta_file).is_file():
            return folder
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found; {layout_text(name)}")
    raise DataError(f"{root / layout.folder / layout.meta_file}: file not found; {layout_text(name)}")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits what the CIFAR pickles hold (dicts, lists, bytes, numpy arrays) and nothing that could run code."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        # Pickles re-written by Python 3: bytes under protocol 2, arrays under protocol 5.
        ("_codecs", "encode"), ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} (a CIFAR pickle holds only numpy arrays, "
                                     "lists and strings)")


def read_pickle(path: Path, name: str) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys (the official files use bytes keys under Python 3)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; {layout_text(name)}")
    try:
        with path.open("rb") as handle:
            data = _ArraysOnlyUnpickler(io.BufferedReader(handle), encoding="latin1").load()
    except Exception as exc:  # a damaged pickle raises almost any exception type
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc}); "
                        f"{layout_text(name)}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(data).__name__}; {layout_text(name)}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in data.items()}


def _decode_names(values: Any) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def read_cifar(name: str, root: str | Path | None, split: str) -> tuple[np.ndarray, list[int], list[str]]:
    """Images (N, 3, 32, 32) uint8, labels and class names of ``split`` ("train" or "test")."""
    if split not in ("train", "test"):
        raise DataError(f"{name}: unknown split {split!r} (allowed: train, test)")
    layout = CIFAR_LAYOUTS[name]
    folder = batches_folder(name, root)
    meta_path = folder / layout.meta_file
    meta = read_pickle(meta_path, name)
    if layout.names_key not in meta:
        raise DataError(f"{meta_path}: no {layout.names_key!r} entry; {layout_text(name)}")
    classes = _decode_names(meta[layout.names_key])

    images, labels = [], []
    for file_name in layout.train_files if split == "train" else layout.test_files:
        path = folder / file_name
        batch = read_pickle(path, name)
        if "data" not in batch or layout.label_key not in batch:
            raise DataError(f"{path}: expected the entries 'data' and {layout.label_key!r}, found "
                            f"{sorted(batch)}; {layout_text(name)}")
        data = np.asarray(batch["data"])
        batch_labels = [int(v) for v in batch[layout.label_key]]
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise DataError(f"{path}: 'data' is {data.dtype} {data.shape} with {len(batch_labels)} labels; expected "
                            f"uint8 (N, 3072) rows of R, G, B planes and N labels; {layout_text(name)}")
        if batch_labels and not 0 <= min(batch_labels) <= max(batch_labels) < len(classes):
            raise DataError(f"{path}: labels outside 0..{len(classes) - 1} (the classes of {meta_path})")
        images.append(data.reshape(-1, 3, 32, 32))
        labels += batch_labels
    return np.concatenate(images), labels, classes


def rgb_to_grey(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, 1, H, W) uint8 with Pillow's ITU-R 601-2 luma (the same as ``convert("L")``)."""
    weighted = (images[:, 0].astype(np.uint32) * 19595 + images[:, 1].astype(np.uint32) * 38470
                + images[:, 2].astype(np.uint32) * 7471 + 0x8000) >> 16
    return weighted.astype(np.uint8)[:, None]
