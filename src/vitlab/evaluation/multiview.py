"""Multi-view video evaluation: T temporal clips × S spatial crops per video, scores averaged over the views.

DualFormer (specs/dualformer.md §3.1, pitfalls 5, 8, 10) tests Kinetics with 4 clips × 1 centre crop and the small
sets with 4 clips × 3 crops, averaging **softmax probabilities** over the views (mmaction ``average_clips='prob'``);
logit averaging is an option. Reported cost: FLOPs per view (:func:`vitlab.models.profile.count_flops`) × views.
The views are folded into the batch here, not in the model: a batch's ``video`` is (B, V, C, T, H, W) (or
(B, C, T, H, W) for one view).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.evaluation.classification import topk_correct
from vitlab.models import profile

AVERAGE_MODES = ("prob", "logit")


def average_view_scores(logits: Tensor, average: str = "prob") -> Tensor:
    """Per-video scores from per-view logits (B, V, K) → (B, K).

    ``prob``: mean over views of softmax(logits) (the official protocol); ``logit``: mean of the logits.
    """
    if logits.dim() != 3:
        raise ValueError(f"per-view logits must be (B, V, K), got {tuple(logits.shape)}")
    if average == "prob":
        return logits.float().softmax(dim=-1).mean(dim=1)
    if average == "logit":
        return logits.float().mean(dim=1)
    raise ValueError(f"average must be one of {AVERAGE_MODES}, got {average!r}")


def fold_views(video: Tensor) -> tuple[Tensor, int]:
    """(B, V, C, T, H, W) → ((B·V, C, T, H, W), V); a (B, C, T, H, W) batch is one view."""
    if video.dim() == 5:
        return video, 1
    if video.dim() != 6:
        raise ValueError(f"batch 'video' must be (B, C, T, H, W) or (B, V, C, T, H, W), got {tuple(video.shape)}")
    return video.flatten(0, 1), video.shape[1]


@torch.no_grad()
def evaluate_multiview(
    model: nn.Module,
    loader: Any,
    fabric: Any | None = None,
    average: str = "prob",
    temporal_clips: int | None = None,
    spatial_crops: int = 1,
    max_views_per_forward: int | None = None,
    flops_per_view: int | None = None,
    count_flops: bool = True,
) -> dict[str, Any]:
    """Top-1/top-5 (%) and loss of videos scored by averaging their views; the views and total FLOPs.

    Args:
        model: a classifier of single views (B, C, T, H, W) → (B, K).
        loader: batches ``{"video": (B, V, C, T, H, W), "label": (B,)}``, V = temporal_clips × spatial_crops.
        fabric: a Lightning Fabric; counts are summed over its processes.
        average: ``prob`` (softmax averaging, official) or ``logit``.
        temporal_clips, spatial_crops: the view layout to report; V must equal their product
            (default temporal_clips = V / spatial_crops).
        max_views_per_forward: run the model on at most this many views at once (memory; None = all).
        flops_per_view: FLOPs of one view if known; else counted with fvcore on the first batch if ``count_flops``.
    Returns:
        ``top1``, ``top5``, ``loss`` (NLL of the averaged probabilities, or cross-entropy of the averaged logits),
        ``num_videos``, ``views``, ``temporal_clips``, ``spatial_crops``, ``average``, ``flops_per_view``,
        ``total_flops`` (per video: flops_per_view × views; None when not counted).
    """
    if average not in AVERAGE_MODES:
        raise ValueError(f"average must be one of {AVERAGE_MODES}, got {average!r}")
    was_training = model.training
    model.eval()
    device = fabric.device if fabric is not None else next(model.parameters()).device
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # videos, top1 hits, top5 hits, loss sum
    views = None
    for batch in loader:
        flat, batch_views = fold_views(batch["video"].to(device))
        if views is None:
            views = batch_views
            if flops_per_view is None and count_flops:
                flops_per_view = profile.count_flops(model, tuple(flat.shape[1:]))
        elif batch_views != views:
            raise ValueError(f"every batch must have the same number of views: {views}, then {batch_views}")
        labels = batch["label"].to(device)
        step = flat.shape[0] if max_views_per_forward is None else max_views_per_forward
        logits = torch.cat([model(flat[i : i + step]).float() for i in range(0, flat.shape[0], step)])
        scores = average_view_scores(logits.view(labels.shape[0], batch_views, -1), average)
        if average == "prob":
            loss = F.nll_loss(scores.clamp_min(1e-12).log(), labels, reduction="sum")
        else:
            loss = F.cross_entropy(scores, labels, reduction="sum")
        hits = topk_correct(scores, labels)
        stats += torch.tensor([len(labels), hits[1], hits[5], float(loss)], dtype=torch.float64, device=device)
    if fabric is not None and fabric.world_size > 1:
        stats = fabric.all_reduce(stats, reduce_op="sum")
    model.train(was_training)
    if views is None:
        raise ValueError("the evaluation loader yielded no batch")
    if temporal_clips is None:
        if views % spatial_crops:
            raise ValueError(f"{views} views per video are not a multiple of spatial_crops={spatial_crops}")
        temporal_clips = views // spatial_crops
    if temporal_clips * spatial_crops != views:
        raise ValueError(
            f"batches hold {views} views per video, but temporal_clips × spatial_crops = "
            f"{temporal_clips} × {spatial_crops} = {temporal_clips * spatial_crops}"
        )
    n = max(float(stats[0]), 1.0)
    return {
        "top1": 100.0 * float(stats[1]) / n,
        "top5": 100.0 * float(stats[2]) / n,
        "loss": float(stats[3]) / n,
        "num_videos": int(stats[0]),
        "views": views,
        "temporal_clips": temporal_clips,
        "spatial_crops": spatial_crops,
        "average": average,
        "flops_per_view": flops_per_view,
        "total_flops": None if flops_per_view is None else flops_per_view * views,
    }
