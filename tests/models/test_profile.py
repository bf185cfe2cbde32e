"""The one FLOP counter (vitlab.models.profile): fvcore's convention, explicit attention, flags restored."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import vitlab  # noqa: F401  (registers the models)
from vitlab.models.profile import count_flops, explicit_attention, flop_counts

CLIP = (3, 8, 32, 32)


def _fvcore_total(model: nn.Module, size: tuple[int, ...]) -> int:
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model.eval(), torch.zeros(1, *size))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(analysis.total())


def test_one_multiply_add_is_one_flop_and_the_head_can_be_left_out() -> None:
    class TwoLayers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(8, 5, bias=False), nn.Linear(5, 3, bias=False)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.forward_features(x))

    model = TwoLayers().train()
    assert flop_counts(model, (8,)) == {"linear": 8 * 5 + 5 * 3}
    assert count_flops(model, (8,), backbone_only=True) == 8 * 5
    assert model.training  # the mode is restored


def test_explicit_attention_is_counted_and_flags_are_restored() -> None:
    model = timm.create_model("test_dualformer").eval()
    previous = timm.layers.use_fused_attn()
    counted = count_flops(model, CLIP)
    assert counted > _fvcore_total(model, CLIP)  # fvcore misses the fused attention products
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    with explicit_attention(model):
        assert not any(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
        explicit_model = timm.create_model("test_dualformer").eval()  # built inside: explicit too
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    assert timm.layers.use_fused_attn() == previous
    assert not any(m.fused_attn for m in explicit_model.modules() if hasattr(m, "fused_attn"))
    assert counted == _fvcore_total(explicit_model, CLIP)
    counts = flop_counts(model, CLIP)
    assert counts["matmul"] > 0 and sum(counts.values()) == counted  # q·kᵀ and attn·v are in the count


@pytest.mark.parametrize("name, size, flops", [("test_dualformer", CLIP, 20_339_424), ("test_iformer", (3, 32, 32),
                                                                                         8_961_728)])
def test_test_model_flops(name: str, size: tuple[int, ...], flops: int) -> None:
    assert count_flops(timm.create_model(name), size) == flops
