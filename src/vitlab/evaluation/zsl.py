"""Zero-shot metrics (specs/transzero.md §2.5, the official ``helper_func.py``): conventional ZSL accuracy and
generalised ZSL U / S / H, each a mean of per-class top-1 accuracies.

Scores are expected to carry the calibration already (TransZero++'s fused S includes β = ±1, calibrated stacking
with γ = 2); ``gamma`` adds a further calibrated-stacking shift, subtracted from the seen columns (0 by default, as the
official evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


def per_class_accuracy(predictions: Tensor, labels: Tensor, classes: Tensor) -> float:
    """Mean over ``classes`` of each class's top-1 accuracy on its own samples (classes with no sample are skipped,
    as a mean over present classes). predictions, labels (N,) class ids; classes (K,) -> fraction in [0, 1]."""
    hits = (predictions == labels).float()
    match = labels[:, None] == classes[None, :]  # (N, K)
    counts = match.sum(dim=0)
    present = counts > 0
    if not bool(present.any()):
        return float("nan")
    correct = (match.float() * hits[:, None]).sum(dim=0)
    return float((correct[present] / counts[present]).mean())


def czsl_accuracy(scores: Tensor, labels: Tensor, unseen: Tensor) -> float:
    """CZSL: argmax over the unseen-class columns only, mean per-class top-1 over the unseen classes.
    scores (N, C) on test_unseen, labels (N,) global class ids, unseen (U,)."""
    predictions = unseen[scores[:, unseen].argmax(dim=1)]
    return per_class_accuracy(predictions, labels, unseen)


def harmonic_mean(unseen_acc: float, seen_acc: float) -> float:
    """H = 2US / (U + S); 0 when both are 0."""
    return 2 * unseen_acc * seen_acc / (unseen_acc + seen_acc) if unseen_acc + seen_acc > 0 else 0.0


def calibrated_stacking(scores: Tensor, seen: Tensor, gamma: float) -> Tensor:
    """Calibrated stacking (Chao et al., 2016): S − γ on the seen columns."""
    if gamma == 0:
        return scores
    out = scores.clone()
    out[:, seen] -= gamma
    return out


def zsl_metrics(seen_scores: Tensor, seen_labels: Tensor, unseen_scores: Tensor, unseen_labels: Tensor,
                seen: Tensor, unseen: Tensor, gamma: float = 0.0) -> dict[str, float]:
    """All of §2.5 in %: ``acc`` (CZSL on test_unseen), ``U`` / ``S`` (GZSL argmax over all C classes, per-class
    mean over the unseen classes on test_unseen / the seen classes on test_seen), ``H``."""
    seen_pred = calibrated_stacking(seen_scores, seen, gamma).argmax(dim=1)
    unseen_pred = calibrated_stacking(unseen_scores, seen, gamma).argmax(dim=1)
    s = per_class_accuracy(seen_pred, seen_labels, seen)
    u = per_class_accuracy(unseen_pred, unseen_labels, unseen)
    acc = czsl_accuracy(unseen_scores, unseen_labels, unseen)
    return {"acc": 100 * acc, "U": 100 * u, "S": 100 * s, "H": 100 * harmonic_mean(u, s)}


@torch.no_grad()
def collect_scores(score_fn: Callable[[Tensor], Tensor], batches: Iterable[Any], device: Any = "cpu"
                   ) -> tuple[Tensor, Tensor]:
    """Run ``score_fn`` over ``{"features", "label"}`` batches: (scores (N, C), labels (N,)) on the CPU."""
    scores, labels = [], []
    for batch in batches:
        scores.append(score_fn(batch["features"].to(device)).float().cpu())
        labels.append(torch.as_tensor(batch["label"]).cpu())
    return torch.cat(scores), torch.cat(labels)
