"""Weighted k-nearest-neighbour classification of frozen features (the DINO protocol, used by Mugs, specs/mugs.md §3.1).

Features are L2-normalised; each test feature takes the k most cosine-similar training features, and every neighbour
votes for its class with weight exp(similarity / T). Several k are scored from one top-k search.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.errors import ConfigError, DataError
from vitlab.losses.distributed import gather_variable

FeatureFn = Callable[[Tensor], Tensor]


@torch.no_grad()
def extract_features(feature_fn: FeatureFn, loader: Iterable[Any], device: torch.device | str = "cpu"
                     ) -> tuple[Tensor, Tensor]:
    """Run ``feature_fn`` ((B, C, H, W) in [0, 1] -> (B, D)) over ``loader``; returns (N, D) float features and (N,)
    labels on the CPU, gathered from every process when a process group runs (each holds a share)."""
    features, labels = [], []
    for batch in loader:
        x = batch["image"].to(device)
        features.append(feature_fn(x).float())
        labels.append(torch.as_tensor(batch["label"]).to(device))
    if not features:
        raise DataError("extract_features: the loader yielded no batch; expected a non-empty evaluation split")
    return gather_variable(torch.cat(features)).cpu(), gather_variable(torch.cat(labels)).cpu()


@torch.no_grad()
def knn_predict_scores(train_features: Tensor, train_labels: Tensor, test_features: Tensor, num_classes: int,
                       ks: Sequence[int], temperature: float, chunk_size: int = 1024) -> dict[int, Tensor]:
    """Class scores of the weighted k-NN vote for every k in ``ks``.

    Args:
        train_features: (N, D); test_features: (M, D) (normalised here).
        train_labels: (N,) int in [0, num_classes).
        temperature: T of the vote weights exp(cos / T) (0.05 for ViT-S in Mugs; DINO's default 0.07).
    Returns:
        {k: (M, num_classes) summed vote weights}.
    """
    if not ks or min(ks) < 1:
        raise ConfigError(f"knn: ks {list(ks)} must be a non-empty list of integers >= 1")
    if temperature <= 0:
        raise ConfigError(f"knn: temperature {temperature} must be > 0")
    if train_features.shape[0] == 0:
        raise ValueError("knn: no training features")
    max_k = min(max(ks), train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    scores: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, test.shape[0], chunk_size):
        similarity = test[start:start + chunk_size] @ train.T  # (m, N)
        top_sim, top_idx = similarity.topk(max_k, dim=1)
        votes = F.one_hot(train_labels[top_idx].long(), num_classes).float()  # (m, max_k, C)
        weights = (top_sim / temperature).exp().unsqueeze(-1)
        cumulative = (votes * weights).cumsum(dim=1)  # the score of every k in one pass
        for k in ks:
            scores[k].append(cumulative[:, min(k, max_k) - 1])
    return {k: torch.cat(v) for k, v in scores.items()}


@torch.no_grad()
def knn_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 num_classes: int, ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07
                 ) -> dict[int, float]:
    """Top-1 accuracy (%) of the weighted k-NN classifier for every k in ``ks``."""
    scores = knn_predict_scores(train_features, train_labels, test_features, num_classes, ks, temperature)
    return {k: 100.0 * float((s.argmax(dim=1) == test_labels).float().mean()) for k, s in scores.items()}
