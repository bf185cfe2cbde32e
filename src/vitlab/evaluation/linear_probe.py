"""Linear probe on frozen features (DINO / Mugs protocol, specs/mugs.md §3.2).

Features of a ViT: the [CLS] token of each of the last ``n`` blocks, each through the final norm, concatenated (ViT-S:
n = 4, 1536-d); optionally with the average of the last block's patch tokens (ViT-B). One linear layer (weights
N(0, 0.01), bias 0), SGD with momentum 0.9 and no weight decay, lr × batch/256, cosine to 0 per iteration.

The probe here trains on features computed once, without augmentation (the official probe re-augments every epoch
with RandAugment and random erasing, 100 epochs); the fixed-feature probe costs one backbone pass and is what the
small-scale plan runs. The docs list this deviation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.models.classifier import ImageClassifier


def has_vit_tokens(model: nn.Module) -> bool:
    """Whether ``model`` has timm VisionTransformer's token interface (patch_embed, _pos_embed, blocks, norm, a
    class token)."""
    return (all(hasattr(model, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm"))
            and getattr(model, "cls_token", None) is not None)


def vit_inner(classifier: nn.Module) -> nn.Module:
    """The timm model inside an :class:`ImageClassifier` (or the model itself)."""
    return classifier.model if isinstance(classifier, ImageClassifier) else classifier


@torch.no_grad()
def last_blocks_features(classifier: nn.Module, x: Tensor, last_blocks: int = 4, avgpool: bool = False) -> Tensor:
    """(B, C, H, W) in [0, 1] -> (B, last_blocks·D [+ D]): the normed [CLS] of the last blocks (+ mean patch token).

    A backbone without ViT tokens falls back to its pooled pre-logit features (``embed``).
    """
    vit: Any = vit_inner(classifier)
    normalize = classifier.normalize if isinstance(classifier, ImageClassifier) else nn.Identity()
    if not has_vit_tokens(vit):
        embed = getattr(classifier, "embed", classifier)
        return embed(x)
    blocks = list(vit.blocks)
    if not 1 <= last_blocks <= len(blocks):
        raise ConfigError(f"method.eval.probe_last_blocks: got {last_blocks}, expected 1..{len(blocks)} (the depth)")
    tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(normalize(x)))))
    outputs = []
    for i, block in enumerate(blocks):
        tokens = block(tokens)
        if i >= len(blocks) - last_blocks:
            outputs.append(vit.norm(tokens))
    features = [o[:, 0] for o in outputs]
    if avgpool:
        features.append(outputs[-1][:, getattr(vit, "num_prefix_tokens", 1):].mean(dim=1))
    return torch.cat(features, dim=-1)


def train_linear_probe(train_features: Tensor, train_labels: Tensor, num_classes: int, epochs: int = 100,
                       base_lr: float = 0.015, batch_size: int = 1024, seed: int = 0) -> nn.Linear:
    """SGD (momentum 0.9, no weight decay) on fixed features (N, D); lr = base_lr · batch/256, cosine per step."""
    if epochs < 1 or batch_size < 1 or base_lr <= 0:
        raise ConfigError(f"linear probe: epochs {epochs}, batch_size {batch_size} and lr {base_lr} must be positive")
    generator = torch.Generator().manual_seed(seed)
    probe = nn.Linear(train_features.shape[1], num_classes)
    with torch.no_grad():
        probe.weight.normal_(0.0, 0.01, generator=generator)
        probe.bias.zero_()
    lr = base_lr * batch_size / 256.0
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    n = train_features.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    features, labels = train_features.float(), train_labels.long()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(probe(features[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return probe


@torch.no_grad()
def probe_accuracy(probe: nn.Linear, features: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy (%) of ``probe`` on (N, D) features."""
    return 100.0 * float((probe(features.float()).argmax(dim=1) == labels).float().mean())


def linear_probe_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                          num_classes: int, epochs: int = 100, base_lr: float = 0.015, batch_size: int = 1024,
                          seed: int = 0, standardize: bool = False) -> float:
    """Train a probe on the training features and return its top-1 accuracy (%) on the test features.

    ``standardize`` first maps every feature dimension to zero mean and unit variance with the training statistics
    (a parameter-free BatchNorm, as MAE's probe). The official protocol does not; short SGD budgets on small sets need
    it, because normed [CLS] features vary little around a large constant offset.
    """
    if standardize:
        mean, std = train_features.mean(dim=0), train_features.std(dim=0) + 1e-6
        train_features, test_features = (train_features - mean) / std, (test_features - mean) / std
    with torch.enable_grad():
        probe = train_linear_probe(train_features, train_labels, num_classes, epochs, base_lr, batch_size, seed)
    return probe_accuracy(probe, test_features, test_labels)
