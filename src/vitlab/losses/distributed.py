"""Collective helpers for losses with global state (queues, memory banks, centres) that degrade to one process.

Without an initialised process group every helper is the identity (world size 1, rank 0), so losses run the same
in a plain Python session, a test, one GPU or every process of a ``torchrun`` launch. The gathers are for buffers
only: they carry no gradient (the teacher side of a momentum method needs none).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def gather_concat(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (B, ...) of every process along dim 0, in rank order -> (world·B, ...).

    Every process must pass the same shape. Rank order matches a batch sampler that gives rank r the r-th
    contiguous slice of the global batch, so the result equals the single-process global batch.
    """
    if not is_distributed():
        return tensor.detach()
    tensor = tensor.detach().contiguous()
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor)
    return torch.cat(out, dim=0)


@torch.no_grad()
def all_reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over processes (a copy; the input is not modified)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out)
        out /= dist.get_world_size()
    return out


@torch.no_grad()
def gather_variable(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (n_r, ...) of every process along dim 0 when the row counts n_r differ (evaluation
    shares); rank order. The identity in one process."""
    if not is_distributed():
        return tensor.detach()
    tensor = tensor.detach().contiguous()
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    longest = int(max(int(c) for c in counts))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[:tensor.shape[0]] = tensor
    out = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(out, padded)
    return torch.cat([o[:int(c)] for o, c in zip(out, counts)], dim=0)
