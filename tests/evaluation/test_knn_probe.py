"""Weighted k-NN against a loop of the DINO protocol; the linear probe on separable features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.evaluation.knn import knn_accuracy, knn_predict_scores
from vitlab.evaluation.linear_probe import last_blocks_features, linear_probe_accuracy


def _naive_knn(train: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, k: int, temperature: float,
               classes: int) -> list[list[float]]:
    out = []
    for q in query:
        sims = [(float(F.cosine_similarity(q, x, dim=0)), int(y)) for x, y in zip(train, labels)]
        sims.sort(key=lambda pair: -pair[0])
        scores = [0.0] * classes
        for sim, label in sims[:k]:
            scores[label] += math.exp(sim / temperature)
        out.append(scores)
    return out


def test_weighted_knn_matches_a_loop_for_several_k() -> None:
    torch.manual_seed(0)
    train, labels, query = torch.randn(40, 6), torch.randint(0, 4, (40,)), torch.randn(7, 6)
    scores = knn_predict_scores(train, labels, query, 4, ks=[1, 5, 20], temperature=0.07, chunk_size=3)
    for k in (1, 5, 20):
        torch.testing.assert_close(scores[k], torch.tensor(_naive_knn(train, labels, query, k, 0.07, 4)),
                                   rtol=1e-4, atol=1e-4)


def test_knn_and_probe_separate_clusters_and_reject_bad_settings() -> None:
    torch.manual_seed(0)
    centres = torch.randn(3, 16) * 4
    labels = torch.arange(3).repeat_interleave(30)
    feats = centres[labels] + torch.randn(90, 16)
    acc = knn_accuracy(feats[::2], labels[::2], feats[1::2], labels[1::2], 3, ks=[5, 20], temperature=0.05)
    assert acc[5] > 95 and acc[20] > 95
    probe = linear_probe_accuracy(feats[::2], labels[::2], feats[1::2], labels[1::2], 3, epochs=30, base_lr=0.5,
                                  batch_size=16)
    assert probe > 95
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy(feats, labels, feats, labels, 3, ks=[5], temperature=0.0)


def test_last_blocks_features_concatenate_the_normed_class_tokens() -> None:
    import timm

    vit = timm.create_model("test_vit", num_classes=0, img_size=32, patch_size=8).eval()
    x = torch.rand(2, 3, 32, 32)
    feats = last_blocks_features(vit, x, last_blocks=1)
    torch.testing.assert_close(feats, vit.forward_features(x)[:, 0])
    depth = len(vit.blocks)
    assert last_blocks_features(vit, x, last_blocks=depth, avgpool=True).shape == (2, (depth + 1) * vit.num_features)


def test_standardized_probe_learns_features_that_vary_little_around_a_large_offset() -> None:
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(40)
    centres = torch.randn(4, 32) * 0.02
    feats = 20.0 + centres[labels] + 0.005 * torch.randn(160, 32)  # the shape of normed [CLS] features
    plain = linear_probe_accuracy(feats[::2], labels[::2], feats[1::2], labels[1::2], 4, epochs=10, base_lr=0.1,
                                  batch_size=16)
    standardized = linear_probe_accuracy(feats[::2], labels[::2], feats[1::2], labels[1::2], 4, epochs=10,
                                         base_lr=0.1, batch_size=16, standardize=True)
    assert standardized > 95 and standardized > plain + 20


def test_frozen_feature_protocol_scores_knn_and_probe_on_one_backbone() -> None:
    from dataclasses import dataclass, field

    from torch import nn

    from vitlab.evaluation.frozen_features import evaluate_frozen_features

    @dataclass
    class Settings:
        knn_k: list[int] = field(default_factory=lambda: [5, 20])
        knn_temperature: float = 0.05
        probe: bool = True
        probe_epochs: int = 30
        probe_lr: float = 0.5
        probe_batch_size: int = 16
        probe_last_blocks: int = 1
        probe_avgpool: bool = False
        probe_standardize: bool = False

    class Embed(nn.Module):  # no ViT tokens: the probe falls back to ``embed`` too
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(16, 8, bias=False)

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x.flatten(1))

    torch.manual_seed(0)
    centres = torch.randn(3, 16) * 4
    labels = torch.arange(3).repeat_interleave(30)
    images = (centres[labels] + torch.randn(90, 16)).view(90, 1, 4, 4)
    train = [{"image": images[::2], "label": labels[::2]}]
    test = [{"image": images[1::2], "label": labels[1::2]}]
    model = Embed()
    loaders = {"knn_train": train, "knn_test": test, "probe_train": train, "probe_test": test}
    metrics = evaluate_frozen_features(model, loaders, Settings(), seed=0)
    with torch.no_grad():
        train_f, test_f = model.embed(images[::2]), model.embed(images[1::2])
    knn = knn_accuracy(train_f, labels[::2], test_f, labels[1::2], 3, ks=[5, 20], temperature=0.05)
    probe = linear_probe_accuracy(train_f, labels[::2], test_f, labels[1::2], 3, epochs=30, base_lr=0.5,
                                  batch_size=16, seed=0)
    assert metrics == {"knn_k5": knn[5], "knn_k20": knn[20], "knn_top1": knn[20], "probe_top1": probe}
    assert metrics["knn_top1"] > 95 and metrics["probe_top1"] > 95
    only_knn = evaluate_frozen_features(model, {"knn_train": train, "knn_test": test}, Settings(probe=False), seed=0,
                                        ks=[5])
    assert only_knn == {"knn_k5": knn[5], "knn_top1": knn[5]}  # without k = 20, knn_top1 is the first k
