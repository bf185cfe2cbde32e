"""Exponential moving average of a model's weights (Polyak averaging), evaluated in place of the raw weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


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
        decay = self.decay if decay is None else float(decay)
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("ModelEma.update: the model's parameters no longer match the averaged copy")
        floats = [(e, p) for e, p in zip(ema_params, params) if e.dtype.is_floating_point]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [p.to(e.dtype) for e, p in floats], 1.0 - decay)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.module(*args, **kwargs)
