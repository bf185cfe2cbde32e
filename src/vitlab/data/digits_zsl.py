"""``digits_zsl`` (specs/transzero.md §6): the bundled digits as a zero-shot set with 12 computed class attributes.

- Seen digits {0, 1, 3, 4, 6, 7, 9}, unseen {2, 5, 8}; trainval = seen digits of the digits training split,
  test_seen = seen digits of its test split, test_unseen = unseen digits of its test split.
- Attributes (A = 12), per image on the 8×8 originals: ink mass in each cell of a 3×3 grid (9), left-right and
  top-bottom symmetry, the number of enclosed holes at threshold 0.5. A class vector is the mean over the class's
  **training** images (every class, as annotators' side information; no unseen image reaches the model), then
  L2-normalised as xlsa17 ``att``.
- Word vectors: fixed seeded Gaussian vectors (12, 32), row-normalised (no word2vec offline).
- Region features: a small CNN trained on the seen training images only (seeded, then frozen); its final 4×4 map of
  128 channels gives R = 16 regions. Extracted once into safetensors shards in the data cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from vitlab.data.cache import cache_dir, cache_key
from vitlab.data.digits import load_digits_split
from vitlab.data.zsl import RegionFeatures, ZSLSplits, extract_region_features

SEEN_DIGITS = (0, 1, 3, 4, 6, 7, 9)
UNSEEN_DIGITS = (2, 5, 8)
ATTRIBUTE_NAMES = [f"ink_{r}{c}" for r in "tmb" for c in "lcr"] + ["lr_symmetry", "tb_symmetry", "holes"]
WORD_DIM = 32
WORD_SEED = 1234
BACKBONE_VERSION = 1
BACKBONE = {"img_size": 32, "epochs": 8, "batch_size": 64, "lr": 1e-3, "seed": 0, "channels": 128}


def image_attributes(images: np.ndarray) -> np.ndarray:
    """Per-image descriptors (N, 12) of 8×8 images (N, 8, 8) in [0, 1] (see the module docstring)."""
    n = images.shape[0]
    edges = [(0, 3), (3, 5), (5, 8)]
    ink = np.stack([images[:, r0:r1, c0:c1].sum(axis=(1, 2)) for r0, r1 in edges for c0, c1 in edges], axis=1)
    ink = ink / np.maximum(images.sum(axis=(1, 2))[:, None], 1e-6)
    lr = 1.0 - np.abs(images - images[:, :, ::-1]).mean(axis=(1, 2))
    tb = 1.0 - np.abs(images - images[:, ::-1, :]).mean(axis=(1, 2))
    # holes: 4-connected background components that touch no image border, labelled for all images at once (the 3-D
    # structure connects pixels within an image only)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(images < 0.5, structure=structure)
    owner = np.zeros(count + 1, dtype=np.int64)
    owner[labels.ravel()] = np.repeat(np.arange(n), images.shape[1] * images.shape[2])
    border = np.zeros(count + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[edge.ravel()] = True
    border[0] = True  # the ink
    holes = np.bincount(owner[~border], minlength=n).astype(np.float64)
    return np.concatenate([ink, lr[:, None], tb[:, None], holes[:, None]], axis=1)


def class_attributes() -> np.ndarray:
    """(10, 12): class means of :func:`image_attributes` over the digits training split, rows L2-normalised."""
    data = load_digits_split(8)
    images = data.train_images[:, 0].numpy()
    labels = data.train_labels.numpy()
    per_image = image_attributes(images)
    means = np.stack([per_image[labels == c].mean(axis=0) for c in range(10)])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def word_vectors() -> np.ndarray:
    """(12, 32) seeded Gaussian attribute vectors, row-normalised."""
    vectors = np.random.default_rng(WORD_SEED).standard_normal((len(ATTRIBUTE_NAMES), WORD_DIM))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def digits_zsl_splits() -> tuple[ZSLSplits, Tensor]:
    """The splits (images = digits train split then test split) and every image (N, 1, 32, 32)."""
    data = load_digits_split(BACKBONE["img_size"])
    images = torch.cat([data.train_images, data.test_images])
    labels = torch.cat([data.train_labels, data.test_labels]).numpy()
    n_train = len(data.train_labels)
    is_train = np.arange(len(labels)) < n_train
    seen = np.isin(labels, SEEN_DIGITS)
    splits = ZSLSplits(class_attributes(), labels, np.flatnonzero(is_train & seen), np.flatnonzero(~is_train & seen),
                       np.flatnonzero(~is_train & ~seen), classes=[str(d) for d in range(10)],
                       attribute_names=list(ATTRIBUTE_NAMES))
    splits.check("digits_zsl")
    return splits, images


class DigitsRegionCNN(nn.Module):
    """Three conv-BN-ReLU-pool blocks: (B, 1, 32, 32) -> map (B, 128, 4, 4); a linear head on its mean for training."""

    def __init__(self, channels: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        widths = [1, 32, 64, channels]
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=False),
                                                    nn.BatchNorm2d(widths[i + 1]), nn.ReLU(), nn.MaxPool2d(2))
                                      for i in range(3)])
        self.head = nn.Linear(channels, num_classes)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.blocks(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.feature_map(x).mean(dim=(2, 3)))


def train_region_backbone(images: Tensor, labels: Tensor, epochs: int | None = None) -> DigitsRegionCNN:
    """Supervised training on the seen classes only (labels are seen digit ids), seeded; returned in eval mode."""
    cfg = {**BACKBONE, **({"epochs": epochs} if epochs is not None else {})}
    generator = torch.Generator().manual_seed(int(cfg["seed"]))
    torch.manual_seed(int(cfg["seed"]))
    model = DigitsRegionCNN(int(cfg["channels"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]))
    model.train()
    for _ in range(int(cfg["epochs"])):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), int(cfg["batch_size"])):
            idx = order[start:start + int(cfg["batch_size"])]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index]}


def digits_zsl_features(folder: str | Path | None = None, backbone_epochs: int | None = None) -> RegionFeatures:
    """The region features of every digits_zsl image (N, 128, 4, 4), extracted once into the data cache (or
    ``folder``) by a backbone trained on the seen classes (``backbone_epochs`` overrides its 8 epochs, e.g. for a
    quick demo); a rerun reads the shards back."""
    params: dict[str, Any] = {"version": BACKBONE_VERSION, **BACKBONE, "seen": list(SEEN_DIGITS)}
    if backbone_epochs is not None:
        params["epochs"] = backbone_epochs
    out = Path(folder) if folder is not None else cache_dir() / f"digits_zsl_regions-{cache_key(params)}"
    if (out / "meta.json").is_file():
        return RegionFeatures(out)
    splits, images = digits_zsl_splits()
    with torch.random.fork_rng():
        train = torch.as_tensor(splits.trainval)
        backbone = train_region_backbone(images[train], torch.as_tensor(splits.labels)[train], int(params["epochs"]))
    extract_region_features(backbone.feature_map, _Images(images), out, batch_size=256, shard_size=4096,
                            source=params)
    return RegionFeatures(out)
