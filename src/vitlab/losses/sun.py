"""SUN's losses: teacher location-specific patch labels, background filtration, the global + λ · patch loss.

specs/sun.md §2.2 (pseudo-labels, patch loss, total loss), §2.3 (background filtration, BGF), §7 pitfalls 1-6.
Shapes: B images, N patches per image (the positions of the final map, row-major), C base classes; the student's
local classifier has C + 1 outputs, the last (index C) being "background".

Defaults are the official code's scheme (which produced the published numbers), except where the code contradicts
its own intent:

- **Background index.** The official ``generate_softlabel`` takes the class count for the background label from a
  tensor that holds one channel after the max over classes, so its background patches get ``on`` at index **1**
  (the second base class), not at the extra output C, which is then never a target. vitlab puts it at index C (the
  paper's "one extra class", and what the spec describes); ``official_background_index=True`` reproduces index 1.
- The target stays unnormalised (pitfall 4), the patch loss is a mean over the B·N patches (pitfall 2) and λ is
  0.5 (pitfall 1), as in the code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.errors import ConfigError
from vitlab.options import PatchReduction, PatchTarget  # choices of SUN's schema, defined without torch

OFFICIAL_BACKGROUND_INDEX = 1  # where the official code's background `on` lands (see the module docstring)


def background_count(num_patches: int, ratio: float) -> int:
    """Background patches per image: round(ratio · N) (10 of 25 at the spec's 0.4; 6 of 16 at the small scale)."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"sun.bg_ratio: got {ratio}, expected a value in [0, 1)")
    return int(round(ratio * num_patches))


def background_mask(teacher_logits: Tensor, count: int) -> Tensor:
    """BGF (§2.3): per image, the ``count`` patches with the lowest max-over-classes teacher logit.

    teacher_logits (B, N, C) -> bool (B, N). Ties are ranked by patch index, lowest first (a stable sort).
    """
    batch, patches, _ = teacher_logits.shape
    if not 0 <= count < patches:
        raise ValueError(f"background_mask: count {count} for {patches} patches, expected 0 <= count < N")
    confidence = teacher_logits.max(dim=-1).values  # (B, N)
    order = torch.sort(confidence, dim=1, stable=True).indices[:, :count]
    mask = torch.zeros(batch, patches, dtype=torch.bool, device=teacher_logits.device)
    return mask.scatter_(1, order, True)


def top_k_classes(teacher_logits: Tensor, top_k: int) -> Tensor:
    """Indices (B, N, k) of each patch's ``top_k`` teacher classes, ties ranked by class index (lowest first)."""
    return torch.sort(teacher_logits, dim=-1, descending=True, stable=True).indices[..., :top_k]


def patch_targets(teacher_logits: Tensor, top_k: int, bg_count: int, smoothing: float = 0.1,
                  target: PatchTarget = "multi_hot", official_background_index: bool = False) -> Tensor:
    """Location-specific patch labels (B, N, C + 1) from the teacher's per-patch class logits (B, N, C).

    ``multi_hot`` (code, default): on = 1 − s + s/C, off = s/C. A foreground patch has ``on`` at its top-k
    classes and ``off`` at the other C + 1 − k entries (sum k·on + (C + 1 − k)·off, 4.6015625 for C = 64, k = 5);
    a background patch (:func:`background_mask` with ``bg_count``) has ``on`` at the background index and ``off``
    elsewhere (sum 1.0015625). Not normalised (pitfall 4).
    ``teacher_prob_topk`` (paper reading, pitfall 3): the teacher's softmax restricted to the top-k classes and
    renormalised, background entry 0; a background patch is one-hot on the background index.
    """
    batch, patches, classes = teacher_logits.shape
    if not 1 <= top_k < classes:
        raise ConfigError(f"sun.top_k: got {top_k} for {classes} base classes, expected 1 <= top_k < C (pitfall 6)")
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"sun.smoothing: got {smoothing}, expected a value in [0, 1)")
    logits = teacher_logits.detach().float()
    top = top_k_classes(logits, top_k)
    background = background_mask(logits, bg_count)
    bg_index = OFFICIAL_BACKGROUND_INDEX if official_background_index else classes
    if target == "multi_hot":
        off, on = smoothing / classes, 1.0 - smoothing + smoothing / classes
        foreground = logits.new_full((batch, patches, classes + 1), off).scatter_(-1, top, on)
        bg = logits.new_full((classes + 1,), off)
        bg[bg_index] = on
    elif target == "teacher_prob_topk":
        kept = logits.gather(-1, top).softmax(dim=-1)  # softmax over the top-k = softmax restricted, renormalised
        foreground = logits.new_zeros(batch, patches, classes + 1).scatter_(-1, top, kept)
        bg = logits.new_zeros(classes + 1)
        bg[bg_index] = 1.0
    else:
        raise ConfigError(f"sun.patch_target: unknown {target!r} (allowed: multi_hot, teacher_prob_topk)")
    return torch.where(background.unsqueeze(-1), bg.expand_as(foreground), foreground)


def patch_loss(student_logits: Tensor, targets: Tensor, reduction: PatchReduction = "mean") -> Tensor:
    """Soft cross-entropy −Σ_c t_c · log softmax(z)_c of every patch; student_logits, targets (B, N, C + 1).

    ``mean`` (code, default): averaged over the B·N patches. ``sum`` (paper, pitfall 2): summed over the N patches
    of an image, averaged over the B images.
    """
    if student_logits.shape != targets.shape:
        raise ValueError(f"patch_loss: student logits {tuple(student_logits.shape)} and targets "
                         f"{tuple(targets.shape)} differ; expected (B, N, C + 1) both")
    per_patch = -(targets * F.log_softmax(student_logits.float(), dim=-1)).sum(dim=-1)  # (B, N)
    if reduction == "mean":
        return per_patch.mean()
    if reduction == "sum":
        return per_patch.sum(dim=1).mean()
    raise ConfigError(f"sun.patch_reduction: unknown {reduction!r} (allowed: mean, sum)")


def sun_loss(global_logits: Tensor, labels: Tensor, student_patch_logits: Tensor, targets: Tensor,
             patch_weight: float = 0.5, reduction: PatchReduction = "mean") -> dict[str, Tensor]:
    """Stage-2 loss (§2.2): CE(global logits (B, C), labels (B,)) + λ · patch loss (B, N, C + 1).

    Returns {"loss", "global_loss", "patch_loss"}.
    """
    global_term = F.cross_entropy(global_logits.float(), labels)
    local_term = patch_loss(student_patch_logits, targets, reduction)
    return {"loss": global_term + patch_weight * local_term, "global_loss": global_term.detach(),
            "patch_loss": local_term.detach()}
