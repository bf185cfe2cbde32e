from __future__ import annotations

import math

import numpy as np

from vitlab.engine.schedules import constant_schedule, cosine_schedule, step_schedule


def naive_cosine(base: float, final: float, epochs: int, spe: int, warmup_epochs: int, start: float) -> list[float]:
    total, warm = epochs * spe, warmup_epochs * spe
    out = []
    for i in range(total):
        if i < warm:
            out.append(start + (base - start) * i / warm)
        else:
            t = (i - warm) / (total - warm)
            out.append(final + 0.5 * (base - final) * (1 + math.cos(math.pi * t)))
    return out


def test_cosine_matches_loop() -> None:
    got = cosine_schedule(1e-3, 1e-6, epochs=5, steps_per_epoch=7, warmup_epochs=2, warmup_start=1e-6)
    np.testing.assert_allclose(got, naive_cosine(1e-3, 1e-6, 5, 7, 2, 1e-6), rtol=1e-12)
    assert len(got) == 35 and got[14] == 1e-3 and got[0] == 1e-6


def test_cosine_without_warmup_ends_near_final() -> None:
    got = cosine_schedule(0.1, 0.0, epochs=10, steps_per_epoch=10)
    assert got[0] == 0.1 and got[-1] < 1e-4 and np.all(np.diff(got) <= 0)


def test_step_and_constant() -> None:
    got = step_schedule(0.1, epochs=4, steps_per_epoch=2, milestones=[2, 3], gamma=0.1)
    np.testing.assert_allclose(got, [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    np.testing.assert_allclose(constant_schedule(0.5, 2, 2, warmup_epochs=1), [0.0, 0.25, 0.5, 0.5])
