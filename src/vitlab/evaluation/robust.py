"""Robust accuracy of a classifier on a data set: under PGD, or under the AutoAttack protocol (the worst case over
a cascade of attacks, vitlab spec ``score.md`` §3.3)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vitlab.attacks.pgd import pgd
from vitlab.attacks.threat import model_mode


def collect(loader: Any, n: int | None = None) -> tuple[Tensor, Tensor]:
    """The first ``n`` (all when None) images (N, C, H, W) and labels (N,) of a loader or data set of dict items."""
    images, labels, count = [], [], 0
    is_loader = hasattr(loader, "batch_size") or not hasattr(loader, "__getitem__")
    source = loader if is_loader else (loader[i] for i in range(len(loader)))
    for item in source:
        x, y = item["image"], item["label"]
        if not torch.is_tensor(y):
            y = torch.tensor(y)
        if x.dim() == 3:
            x, y = x.unsqueeze(0), y.reshape(1)
        images.append(x)
        labels.append(y.long())
        count += x.shape[0]
        if n is not None and count >= n:
            break
    if not images:
        raise ValueError("collect: the data set is empty")
    x_all, y_all = torch.cat(images), torch.cat(labels)
    return (x_all[:n], y_all[:n]) if n is not None else (x_all, y_all)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` in eval mode (its mode is restored)."""
    device = next(model.parameters()).device
    correct = 0
    with model_mode(model, "eval"):
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum())
    return correct / max(x.shape[0], 1)


def robust_accuracy_pgd(model: nn.Module, loader: Any, *, eps: float, norm: str = "Linf", steps: int = 20,
                        step_size: float | None = None, loss: str = "ce", seed: int = 0,
                        batch_size: int = 256) -> float:
    """Accuracy (in %) under PGD-``steps`` with a seeded random start; step ε/4 by default (L∞) or 2.5ε/steps (L2)."""
    x, y = collect(loader)
    device = next(model.parameters()).device
    alpha = step_size if step_size is not None else (eps / 4 if norm == "Linf" else 2.5 * eps / steps)
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        x_adv = pgd(model, xb, yb, eps=eps, norm=norm, steps=steps, step_size=alpha, loss=loss, generator=generator)
        with torch.no_grad(), model_mode(model, "eval"):
            correct += int((model(x_adv).argmax(1) == yb).sum())
    return 100.0 * correct / max(x.shape[0], 1)
