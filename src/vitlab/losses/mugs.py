"""The three supervisions of Mugs (Zhou et al., 2022, "Mugs: A Multi-Granular Self-Supervised Learning Framework").

* instance discrimination (IDS, §3.1): InfoNCE of the student prediction against the teacher target of another view,
  with a FIFO queue of teacher keys as negatives (:class:`QueueInfoNCELoss`);
* local-group discrimination (LGDS, §3.2): the same InfoNCE on local-group features, whose neighbours come from a
  memory of patch-token means (:class:`NeighbourMemory`);
* group discrimination (GDS, §3.3): DINO's cross-entropy to centred, sharpened teacher prototypes
  (:class:`GroupDiscriminationLoss`).

All three use the same multi-crop pairing (specs/mugs.md §2.2): each of the 2 teacher views is paired with every
student view except the one of the same index; the loss is 0.5·mean(global-crop terms) + 0.5·mean(local-crop terms).
Features arrive view-major: ``(V·B, D)`` holds view 0 of the batch, then view 1, ... (the order of ``torch.cat``).

Buffers (queues, memories, centre) are updated with features gathered from every process
(:mod:`vitlab.losses.distributed`), so every process holds the same state and 2 processes of batch B update them
exactly as 1 process of batch 2B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.losses.distributed import all_reduce_mean, gather_concat

__all__ = ["GroupDiscriminationLoss", "KeyQueue", "NeighbourMemory", "QueueInfoNCELoss", "crop_pairs",
           "fifo_write", "multicrop_clustering_loss", "multicrop_info_nce"]


def crop_pairs(num_teacher_views: int, num_student_views: int) -> list[tuple[int, int]]:
    """(teacher view, student view) pairs of the loss: all of them except equal indices (§2.2).

    With 2 teacher views and 12 student views: 22 pairs, 2 with a global student view and 20 with a local one.
    """
    return [(t, s) for t in range(num_teacher_views) for s in range(num_student_views) if t != s]


def _average_pairs(terms: dict[tuple[int, int], Tensor], num_global: int) -> Tensor:
    """0.5·mean(terms with a global student view) + 0.5·mean(terms with a local one); the global mean alone
    when there are no local crops (the official code divides by zero there)."""
    large = [v for (_, s), v in terms.items() if s < num_global]
    small = [v for (_, s), v in terms.items() if s >= num_global]
    if not large:
        raise ValueError("multi-crop loss: no (teacher, student) pair has a global student view; expected at least "
                         f"{num_global} global student views")
    large_mean = torch.stack(large).mean()
    if not small:
        return large_mean
    return 0.5 * (large_mean + torch.stack(small).mean())


def _split_views(features: Tensor, num_views: int, name: str) -> list[Tensor]:
    if features.shape[0] % num_views != 0:
        raise ValueError(f"{name}: {features.shape[0]} rows cannot be split into {num_views} views of equal batch")
    return list(features.chunk(num_views))


def multicrop_info_nce(student_preds: Tensor, teacher_targets: Tensor, negatives: Tensor, temperature: float,
                       num_student_views: int, num_teacher_views: int = 2, num_global: int = 2) -> Tensor:
    """InfoNCE over the multi-crop pairs (§2.3): −log softmax([s·t⁺, s·n_1, ..., s·n_K] / τ)_0, batch-averaged.

    Args:
        student_preds: (S·B, D) L2-normalised student predictions, view-major.
        teacher_targets: (T·B, D) L2-normalised teacher targets (no gradient flows into them).
        negatives: (K, D) the queue of teacher keys.
        temperature: τ (0.2 in Mugs).
    Returns:
        scalar loss.
    """
    preds = _split_views(student_preds, num_student_views, "student_preds")
    targets = _split_views(teacher_targets.detach(), num_teacher_views, "teacher_targets")
    negatives = negatives.detach()
    # The negative logits depend only on the student view: compute them once per view, not once per pair.
    negative_logits = [p @ negatives.T / temperature for p in preds]  # S x (B, K)
    terms = {}
    for t, s in crop_pairs(num_teacher_views, num_student_views):
        positive = (preds[s] * targets[t]).sum(-1, keepdim=True) / temperature  # (B, 1)
        logits = torch.cat([positive, negative_logits[s]], dim=1)
        terms[(t, s)] = (torch.logsumexp(logits, dim=1) - positive[:, 0]).mean()
    return _average_pairs(terms, num_global)


def multicrop_clustering_loss(student_logits: Tensor, teacher_logits: Tensor, center: Tensor, teacher_temp: float,
                              student_temp: float, num_student_views: int, num_teacher_views: int = 2,
                              num_global: int = 2) -> Tensor:
    """DINO's centred, sharpened cross-entropy over the multi-crop pairs (§2.5).

    H(softmax((t − c)/τ_t), log_softmax(s/τ_s)) per pair. student_logits (S·B, P), teacher_logits (T·B, P),
    center (1, P) or (P,). Returns a scalar.
    """
    log_probs = [F.log_softmax(s / student_temp, dim=-1)
                 for s in _split_views(student_logits, num_student_views, "student_logits")]
    probs = [F.softmax((t.detach() - center) / teacher_temp, dim=-1)
             for t in _split_views(teacher_logits, num_teacher_views, "teacher_logits")]
    terms = {(t, s): torch.sum(-probs[t] * log_probs[s], dim=-1).mean()
             for t, s in crop_pairs(num_teacher_views, num_student_views)}
    return _average_pairs(terms, num_global)


@torch.no_grad()
def fifo_write(buffer: Tensor, pointer: Tensor, rows: Tensor, reproduce_pointer_skip: bool = False) -> None:
    """Write ``rows`` (n, D) into the ring ``buffer`` (K, D) at ``pointer`` (a 1-element long tensor) and advance it.

    After the write the newest n rows sit at [ptr − n, ptr) modulo K. ``reproduce_pointer_skip`` copies the official
    LGDS memory (specs/mugs.md pitfall 2): a write that does not wrap advances the pointer by 2n, skipping n slots.
    """
    size, n = buffer.shape[0], rows.shape[0]
    if n == 0:
        return
    if n > size:
        raise ValueError(f"fifo_write: {n} rows do not fit a buffer of {size}; expected a buffer at least as large as "
                         "one global batch")
    ptr = int(pointer[0])
    rows = rows.to(buffer.dtype)
    if ptr + n <= size:
        buffer[ptr:ptr + n] = rows
        new_ptr = (ptr + 2 * n if reproduce_pointer_skip else ptr + n) % size
    else:
        head = size - ptr
        buffer[ptr:] = rows[:head]
        buffer[:n - head] = rows[head:]
        new_ptr = n - head
    pointer[0] = new_ptr


class KeyQueue(nn.Module):
    """A FIFO queue of K teacher keys (K, D), initialised with random unit vectors (MoCo)."""

    keys: Tensor
    pointer: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"KeyQueue: size {size} and dim {dim} must be >= 1")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Gather ``keys`` (B, D) from every process and push them (world·B rows) into the queue."""
        gathered = gather_concat(keys)
        if self.keys.shape[0] % gathered.shape[0] != 0:
            raise ValueError(f"queue size {self.keys.shape[0]} is not divisible by the global batch "
                             f"{gathered.shape[0]}; choose a multiple of it")
        fifo_write(self.keys, self.pointer, gathered)


class QueueInfoNCELoss(nn.Module):
    """Multi-crop InfoNCE against its own queue (IDS and LGDS, §2.3-2.4); the teacher views are enqueued after it.

    Args:
        dim: feature width D (256 in Mugs).
        queue_size: K negatives (65,536 in Mugs).
        temperature: τ (0.2 in Mugs).
    """

    def __init__(self, dim: int, queue_size: int, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"QueueInfoNCELoss: temperature {temperature} must be > 0")
        self.queue = KeyQueue(queue_size, dim)
        self.temperature = temperature

    def forward(self, student_preds: Tensor, teacher_targets: Tensor, num_student_views: int,
                num_teacher_views: int = 2, num_global: int = 2, update: bool = True) -> Tensor:
        """student_preds (S·B, D), teacher_targets (T·B, D) -> scalar; then enqueue the teacher views in order."""
        loss = multicrop_info_nce(student_preds, teacher_targets, self.queue.keys.clone(), self.temperature,
                                  num_student_views, num_teacher_views, num_global)
        if update:
            for view in teacher_targets.detach().chunk(num_teacher_views):
                self.queue.enqueue(view)
        return loss


class NeighbourMemory(nn.Module):
    """The LGDS memory (§2.4): K vectors of the backbone width, randn-initialised (not normalised), a FIFO ring.

    ``neighbours`` returns, for each query, the ``top_k`` stored vectors of highest cosine similarity; ``write`` pushes
    the (gathered) patch-token means of the first global crop, optionally only the rows flagged by ``mask``.
    """

    bank: Tensor
    pointer: Tensor

    def __init__(self, size: int, dim: int, top_k: int = 8, reproduce_pointer_skip: bool = False) -> None:
        super().__init__()
        if top_k < 1 or top_k > size:
            raise ValueError(f"NeighbourMemory: top_k {top_k} must be in [1, memory size {size}]")
        self.top_k = top_k
        self.reproduce_pointer_skip = reproduce_pointer_skip
        self.register_buffer("bank", torch.randn(size, dim))
        self.register_buffer("pointer", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def neighbour_index(self, query: Tensor) -> Tensor:
        """(B, D) -> (B, top_k) indices of the most cosine-similar memory rows, most similar first."""
        similarity = F.normalize(query.float(), dim=-1) @ F.normalize(self.bank.float(), dim=-1).T
        return similarity.topk(self.top_k, dim=-1).indices

    @torch.no_grad()
    def neighbours(self, query: Tensor) -> Tensor:
        """(B, D) -> (B, top_k, D) stored vectors (they serve as keys and values of the relation block)."""
        return self.bank[self.neighbour_index(query)].to(query.dtype)

    @torch.no_grad()
    def write(self, vectors: Tensor, mask: Tensor | None = None) -> int:
        """Gather ``vectors`` (B, D) (and ``mask`` (B,) bool) from every process; push the kept rows. Returns their
        number."""
        gathered = gather_concat(vectors.float())
        if mask is not None:
            # gloo gathers no bool tensors: send the flags as bytes
            keep = gather_concat(mask.to(device=vectors.device, dtype=torch.uint8).reshape(-1))
            gathered = gathered[keep.bool()]
        fifo_write(self.bank, self.pointer, gathered, self.reproduce_pointer_skip)
        return int(gathered.shape[0])


class GroupDiscriminationLoss(nn.Module):
    """GDS (§2.5): DINO centring and sharpening over the multi-crop pairs, with an EMA centre of the teacher outputs.

    Args:
        out_dim: number of prototypes P (65,536 in Mugs).
        student_temp: τ_s (0.1).
        center_momentum: the centre's EMA momentum (0.9): c ← m·c + (1 − m)·mean(teacher outputs).
    """

    center: Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if student_temp <= 0 or not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"GroupDiscriminationLoss: student_temp {student_temp} must be > 0 and center_momentum "
                             f"{center_momentum} in [0, 1]")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, teacher_temp: float, num_student_views: int,
                num_teacher_views: int = 2, num_global: int = 2, update: bool = True) -> Tensor:
        """student_logits (S·B, P), teacher_logits (T·B, P) -> scalar; then the centre moves towards the global
        batch mean of the teacher outputs."""
        loss = multicrop_clustering_loss(student_logits, teacher_logits, self.center, teacher_temp, self.student_temp,
                                         num_student_views, num_teacher_views, num_global)
        if update:
            self.update_center(teacher_logits)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        batch_center = all_reduce_mean(teacher_logits.detach().float().mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center * (1.0 - self.center_momentum))
