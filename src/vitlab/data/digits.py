"""``digits``: scikit-learn's 1,797 real 8x8 handwritten digits, up-sampled, with a fixed stratified 80/20 split.

specs/data.md, "digits". The source ships inside the scikit-learn wheel (``load_digits``), so nothing downloads.
Building takes a few tens of milliseconds, less than reading a cache file back, so the set is kept in process
memory only.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vitlab.data.dataset import resize_images

DIGITS_CLASSES = [str(d) for d in range(10)]
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsSplit:
    """The digits train/test split as tensors: images (N, 1, S, S) float in [0, 1], labels (N,) int64."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


@functools.lru_cache(maxsize=1)
def _digits_source() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # the pixel counts run 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and test indices: in every class a seeded shuffle, then the first round(fraction * n) go to test."""
    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for label in sorted(set(int(v) for v in labels)):
        members = [int(i) for i in np.flatnonzero(labels == label)]
        rng.shuffle(members)
        n_test = int(test_fraction * len(members) + 0.5)
        test += members[:n_test]
        train += members[n_test:]
    return sorted(train), sorted(test)


@functools.lru_cache(maxsize=4)
def load_digits_split(img_size: int = 32) -> DigitsSplit:
    """The fixed digits split, up-sampled bilinearly to ``img_size`` (8 keeps the original pixels).

    Returns single-channel images; :func:`build_digits` repeats them to 3 channels when asked. The tensors are
    shared between calls: do not modify them in place.
    """
    images, labels = _digits_source()
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    source = torch.from_numpy(images.copy()).unsqueeze(1)  # (1797, 1, 8, 8)
    resized = resize_images(source, img_size)
    targets = torch.from_numpy(labels.copy())
    return DigitsSplit(resized[train_idx], targets[train_idx], resized[test_idx], targets[test_idx])
