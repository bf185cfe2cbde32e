"""The frozen-feature protocol of self-supervised pretraining (DINO / Mugs, specs/mugs.md §3.1-3.2): weighted k-NN on
a backbone's pooled features and a linear probe on the normed [CLS] of its last blocks, both on frozen features.

One function scores any backbone (a pretrained teacher, a random init, a supervised reference, raw pixels) the same
way: Mugs' ``evaluate`` and the experiment drivers call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from vitlab.evaluation.knn import extract_features, knn_accuracy
from vitlab.evaluation.linear_probe import last_blocks_features, linear_probe_accuracy


class FrozenFeatureSettings(Protocol):
    """What the protocol reads (Mugs' ``method.eval`` section has these fields)."""

    knn_k: list[int]  # the k values scored
    knn_temperature: float  # T of the vote weights exp(cos / T)
    probe: bool  # also train and score the linear probe
    probe_epochs: int
    probe_lr: float  # per 256 images
    probe_batch_size: int
    probe_last_blocks: int  # concatenated [CLS] of the last blocks
    probe_avgpool: bool  # also the mean patch token of the last block
    probe_standardize: bool  # z-score the features first


def _num_classes(*labels: Tensor) -> int:
    return int(max(int(y.max()) for y in labels) + 1)


@torch.no_grad()
def evaluate_frozen_features(backbone: nn.Module, loaders: Mapping[str, Iterable[Any]],
                             settings: FrozenFeatureSettings, seed: int, device: torch.device | str = "cpu",
                             ks: Sequence[int] | None = None) -> dict[str, float]:
    """k-NN and linear-probe top-1 (%) of a frozen ``backbone``.

    Args:
        backbone: a classifier; the k-NN uses its ``embed`` (pooled pre-logit features) when it has one, the probe
            :func:`~vitlab.evaluation.linear_probe.last_blocks_features`. Its train/eval mode is left as it is.
        loaders: ``knn_train`` (the neighbour memory) and ``knn_test`` (the queries); with ``settings.probe`` also
            ``probe_train`` and ``probe_test``. Batches are ``{"image": (B, C, H, W) in [0, 1], "label": (B,)}``.
        settings: the k values, vote temperature and probe hyper-parameters.
        seed: the probe's initialisation and shuffling seed.
        ks: the k values to score instead of ``settings.knn_k``.
    Returns:
        ``knn_k{k}`` for every k, ``knn_top1`` (k = 20 when scored, else the first k) and, with the probe,
        ``probe_top1``.
    """
    ks = list(settings.knn_k if ks is None else ks)
    embed = getattr(backbone, "embed", backbone)
    train_f, train_y = extract_features(embed, loaders["knn_train"], device)
    test_f, test_y = extract_features(embed, loaders["knn_test"], device)
    accuracy = knn_accuracy(train_f, train_y, test_f, test_y, _num_classes(train_y, test_y), ks,
                            settings.knn_temperature)
    metrics = {f"knn_k{k}": value for k, value in accuracy.items()}
    metrics["knn_top1"] = accuracy[20] if 20 in accuracy else accuracy[ks[0]]
    if settings.probe:
        def probe_features(x: Tensor) -> Tensor:
            return last_blocks_features(backbone, x, settings.probe_last_blocks, settings.probe_avgpool)

        train_f, train_y = extract_features(probe_features, loaders["probe_train"], device)
        test_f, test_y = extract_features(probe_features, loaders["probe_test"], device)
        metrics["probe_top1"] = linear_probe_accuracy(
            train_f, train_y, test_f, test_y, _num_classes(train_y, test_y), settings.probe_epochs, settings.probe_lr,
            settings.probe_batch_size, seed=seed, standardize=settings.probe_standardize)
    return metrics
