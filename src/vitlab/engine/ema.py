"""Exponential moving averages of weights: the one update rule every method that keeps an average uses.

``ema_update_`` is the rule (``target ← decay · target + (1 − decay) · source``, in place, as a multiply then an
add with ``alpha``: the rounding of Mugs' teacher update, kept bit for bit); ``copy_buffers_`` copies buffers (BN
statistics) by name. :class:`ModelEma` is the engine's Polyak average of a model's weights, evaluated in place of the
raw weights (``ema.enabled``; SCORE hands it a per-step decay); Mugs' teacher applies the same rule to the parameters
it shares with the student.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def ema_update_(target: Iterable[Tensor], source: Iterable[Tensor], decay: float) -> None:
    """``t ← decay · t + (1 − decay) · s`` for every matched pair of floating tensors; other dtypes are left alone.

    Args:
        target: the averaged tensors, updated in place.
        source: the live tensors, same length and shapes (not modified; their gradients are not tracked).
        decay: the weight of the old average, in [0, 1]; 0 copies ``source``, 1 keeps ``target``.
    """
    targets, sources = list(target), list(source)
    if len(targets) != len(sources):
        raise ValueError(f"ema_update_: {len(targets)} averaged tensors but {len(sources)} live ones")
    pairs = [(t, s) for t, s in zip(targets, sources) if t.dtype.is_floating_point]
    if not pairs:
        return
    averaged = [t for t, _ in pairs]
    decay = float(decay)
    torch._foreach_mul_(averaged, decay)
    torch._foreach_add_(averaged, [s.detach().to(t.dtype) for t, s in pairs], alpha=1.0 - decay)


@torch.no_grad()
def copy_buffers_(target: nn.Module, source: nn.Module) -> None:
    """Copy every buffer of ``source`` into the buffer of the same name in ``target`` (names ``target`` lacks are
    skipped): an average keeps the live model's BatchNorm statistics rather than averaging them."""
    source_buffers = dict(source.named_buffers())
    for name, buffer in target.named_buffers():
        if name in source_buffers:
            buffer.copy_(source_buffers[name])


class ModelEma(nn.Module):
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step; buffers (BN statistics) are copied.

    Args:
        model: the module to average (not modified).
        decay: per-step decay; the effective horizon is about ``1 / (1 - decay)`` steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """One averaging step; ``decay`` overrides the constant decay for this step (a per-step schedule)."""
        try:
            ema_update_(self.module.parameters(), model.parameters(), self.decay if decay is None else decay)
        except ValueError:
            raise ValueError("ModelEma.update: the model's parameters no longer match the averaged copy") from None
        copy_buffers_(self.module, model)

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.module(*args, **kwargs)
