"""The one EMA rule (engine/ema.py): a loop copy of t ← d·t + (1 − d)·s, buffers copied by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitlab.engine.ema import ModelEma, copy_buffers_, ema_update_


def test_update_is_multiply_then_add_bit_for_bit_and_skips_integer_tensors() -> None:
    torch.manual_seed(0)
    target = [torch.randn(5, 3), torch.randn(7), torch.arange(4)]
    source = [torch.randn(5, 3), torch.randn(7), torch.arange(4) + 10]
    expected = [t.clone() for t in target]
    for t, s in zip(expected[:2], source[:2]):  # Mugs' teacher update, one tensor at a time
        t.mul_(0.996).add_(s, alpha=1.0 - 0.996)
    ema_update_(target, source, 0.996)
    for t, e in zip(target, expected):
        assert torch.equal(t, e)
    assert target[2].tolist() == [0, 1, 2, 3]  # an integer tensor is not averaged
    ema_update_(target, source, 0.0)  # decay 0 copies
    assert all(torch.equal(t, s) for t, s in zip(target[:2], source[:2]))
    with pytest.raises(ValueError, match="2 averaged tensors but 3 live ones"):
        ema_update_(target[:2], source, 0.5)


def test_copy_buffers_by_name_skips_names_the_target_lacks() -> None:
    live = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.BatchNorm2d(2))
    average = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    for buffer in live.buffers():
        buffer.fill_(3)
    copy_buffers_(average, live)
    assert all(float(b.float().mean()) == 3 for b in average.buffers())


def test_model_ema_is_the_same_rule_and_names_a_changed_model() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    expected = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(0.5)
    ema_update_(expected, model.parameters(), 0.9)
    ema.update(model)
    assert all(torch.equal(e, x) for e, x in zip(ema.module.parameters(), expected))
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    with pytest.raises(ValueError, match="no longer match"):
        ema.update(nn.Sequential(nn.Linear(3, 2)))
