"""Per-step schedules as explicit arrays (DINO's ``cosine_scheduler``): the engine computes them once and passes
the value of each step to the optimizer and the method."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def cosine_schedule(base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``base`` over ``warmup_epochs``, then a half cosine to ``final``.

    Returns an array of length ``epochs * steps_per_epoch``; value i is used for optimizer step i.
    """
    total = epochs * steps_per_epoch
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total)
    ramp = np.linspace(warmup_start, base, warmup, endpoint=False) if warmup > 0 else np.zeros(0)
    rest = total - warmup
    iters = np.arange(rest)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / max(rest, 1)))
    out = np.concatenate([ramp, cosine])
    assert len(out) == total
    return out


def step_schedule(base: float, epochs: int, steps_per_epoch: int, milestones: Sequence[float], gamma: float,
                  warmup_epochs: float = 0.0, warmup_start: float = 0.0) -> np.ndarray:
    """``base`` multiplied by ``gamma`` at each milestone epoch (after an optional linear warm-up)."""
    total = epochs * steps_per_epoch
    epoch_of_step = np.arange(total) / steps_per_epoch
    out = base * gamma ** np.searchsorted(np.sort(np.asarray(milestones, dtype=float)), epoch_of_step, side="right")
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total)
    if warmup:
        out[:warmup] = np.linspace(warmup_start, base, warmup, endpoint=False)
    return out.astype(float)


def constant_schedule(value: float, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
                      warmup_start: float = 0.0) -> np.ndarray:
    out = np.full(epochs * steps_per_epoch, float(value))
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), len(out))
    if warmup:
        out[:warmup] = np.linspace(warmup_start, value, warmup, endpoint=False)
    return out


def restarting_ema_decay(epochs: int, steps_per_epoch: int, decay: float, warmup_fraction: float = 0.025
                         ) -> np.ndarray:
    """A weight-EMA decay per update: copy the model during a warm-up, then restart from 0.1 -> (epochs * steps,).

    Entry ``s`` is the decay of the update after optimizer step ``k = s + 1``, with the warm-up
    ``W = warmup_fraction * epochs * steps_per_epoch`` (a float): 0 while ``k < W`` (the average copies the model,
    i.e. the first ceil(W) - 1 updates), then ``min(decay, (1 + d) / (10 + d))`` with ``d = k - W`` the updates since
    the warm-up, so the decay restarts from 0.1 and reaches ``decay`` smoothly. This is the schedule of SCORE's
    ``watrain.py::ema_update`` (spec score §3), which its TRADES baseline uses as well.
    """
    warmup = warmup_fraction * epochs * steps_per_epoch
    since = np.arange(1, epochs * steps_per_epoch + 1, dtype=float) - warmup
    after = np.maximum(since, 0.0)
    return np.where(since >= 0, np.minimum(decay, (1.0 + after) / (10.0 + after)), 0.0)
