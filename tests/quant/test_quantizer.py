"""The uniform quantizer of vitlab spec clusterq §2.4 against the spec's test values (§5) and naive loops."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import vitlab.models  # noqa: F401
from vitlab.quant.quantizer import (
    ActQuantizer,
    QuantConv2d,
    QuantizationError,
    QuantLinear,
    dequantize,
    fake_quantize,
    quant_params,
    quantize_model,
    quantize_to_int,
    set_act_calibration,
)

X = torch.tensor([-0.9, -0.31, 0.0, 0.12, 0.47, 1.3], dtype=torch.float64)


def naive_fake_quant(values: list[float], lo: float, hi: float, bits: int) -> tuple[list[int], list[float]]:
    """Element by element from the spec's formulas (Python's round() also rounds half to even)."""
    scale = (2 ** bits - 1) / (hi - lo)
    zero_point = round(scale * lo) + 2 ** (bits - 1)
    codes, out = [], []
    for v in values:
        q = min(max(round(scale * v - zero_point), -2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        codes.append(q)
        out.append((q + zero_point) / scale)
    return codes, out


@pytest.mark.parametrize("bits,codes,values,max_err", [
    (4, [-8, -4, -2, -1, 1, 7], [-0.88, -0.293333, 0.0, 0.146667, 0.44, 1.32], 0.03),
    (8, [-128, -60, -24, -10, 30, 127], [-0.897255, -0.310588, 0.0, 0.120784, 0.465882, 1.302745], 0.004118),
])
def test_per_tensor_spec_values(bits: int, codes: list[int], values: list[float], max_err: float) -> None:
    scale, zero_point = quant_params(X.min(), X.max(), bits)
    q = quantize_to_int(X, scale, zero_point, bits)
    assert q.tolist() == codes
    deq = dequantize(q, scale, zero_point)
    assert torch.allclose(deq, torch.tensor(values, dtype=torch.float64), atol=1e-6)
    assert float((deq - X).abs().max()) == pytest.approx(max_err, abs=1e-6)
    assert float(deq[2]) == 0.0  # zero is exactly representable
    naive_codes, naive_values = naive_fake_quant(X.tolist(), -0.9, 1.3, bits)
    assert naive_codes == codes
    assert torch.allclose(fake_quantize(X, X.min(), X.max(), bits), torch.tensor(naive_values, dtype=torch.float64))


def test_per_channel_weights_exact() -> None:
    weight = torch.tensor([[0.5, -0.25, 0.1], [2.0, 1.0, -3.0]])
    linear = nn.Linear(3, 2, bias=False)
    linear.weight.data.copy_(weight)
    quant = QuantLinear(linear, 4)
    lo, hi = weight.min(dim=1, keepdim=True).values, weight.max(dim=1, keepdim=True).values
    scale, zero_point = quant_params(lo, hi, 4)
    assert quantize_to_int(weight, scale, zero_point, 4).tolist() == [[7, -8, -1], [7, 4, -8]]
    x = torch.eye(3)
    assert torch.equal(quant(x), F.linear(x, weight))  # the dequantised weights equal W exactly
    for row in range(2):
        _, naive = naive_fake_quant(weight[row].tolist(), float(lo[row]), float(hi[row]), 4)
        assert torch.allclose(quant(x)[:, row], torch.tensor(naive), atol=1e-6)


def test_conv_weights_per_output_channel_loop() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=True)
    quant = QuantConv2d(conv, 3)
    x = torch.randn(2, 3, 6, 6)
    expected_weight = torch.empty_like(conv.weight)
    for c in range(4):
        flat = conv.weight[c].detach().flatten()
        _, values = naive_fake_quant(flat.tolist(), float(flat.min()), float(flat.max()), 3)
        expected_weight[c] = torch.tensor(values).view_as(conv.weight[c])
    assert torch.allclose(quant(x), F.conv2d(x, expected_weight, conv.bias), atol=1e-5)


def test_straight_through_gradient() -> None:
    x = torch.tensor([-2.0, -0.5, 0.3, 0.9, 5.0], requires_grad=True)
    upstream = torch.tensor([0.1, -1.0, 2.0, 3.0, -4.0])
    # the range covers only part of x: the gradient still passes unchanged outside [min, max]
    fake_quantize(x, torch.tensor(-0.5), torch.tensor(0.9), 4).backward(upstream)
    assert torch.equal(x.grad, upstream)


def test_activation_range_ema_and_freeze() -> None:
    quantizer = ActQuantizer(8, "ema")
    quantizer.calibrating = True
    batches = [torch.tensor([0.0, 2.0]), torch.tensor([0.0, 4.0]), torch.tensor([0.5, 1.0])]
    quantizer(batches[0])
    assert [float(v) for v in quantizer.range()] == pytest.approx([0.0, 2.0])  # bias-corrected = batch range
    raw_min = raw_max = 0.0
    for t, b in enumerate(batches, start=1):
        raw_min = 0.9 * raw_min + 0.1 * float(b.min())
        raw_max = 0.9 * raw_max + 0.1 * float(b.max())
        if t > 1:
            quantizer(b)
    correction = 1 - 0.9 ** 3
    assert [float(v) for v in quantizer.range()] == pytest.approx([raw_min / correction, raw_max / correction])
    quantizer.calibrating = False
    frozen = [float(v) for v in quantizer.range()]
    quantizer(torch.tensor([-10.0, 10.0]))
    assert [float(v) for v in quantizer.range()] == frozen


def test_activation_range_minmax() -> None:
    quantizer = ActQuantizer(8, "minmax")
    quantizer.calibrating = True
    for b in (torch.tensor([0.2, 1.0]), torch.tensor([0.5, 3.0]), torch.tensor([0.1, 2.0])):
        quantizer(b)
    assert [float(v) for v in quantizer.range()] == pytest.approx([0.1, 3.0])


@pytest.mark.parametrize("name", ["test_cifar_resnet", "resnet18", "mobilenetv2_100"])
def test_coverage(name: str) -> None:
    model = timm.create_model(name, num_classes=10).eval()
    n_layers = sum(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())
    quantized = quantize_model(model, 4, 4)
    assert sum(isinstance(m, (QuantConv2d, QuantLinear)) for m in quantized.modules()) == n_layers
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in quantized.modules())
    act_nodes = [n for n in quantized.graph.nodes if n.op == "call_module" and n.target.startswith("act_quant_")]
    assert act_nodes
    for node in act_nodes:  # activation quantizers sit only right after ReLU / ReLU6
        source = node.args[0]
        if source.op == "call_module":
            assert isinstance(quantized.get_submodule(source.target), (nn.ReLU, nn.ReLU6))
        else:
            assert source.target in (F.relu, torch.relu, "relu", F.relu6, "relu6")
    set_act_calibration(quantized, True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        quantized(x)
    set_act_calibration(quantized, False)
    assert quantized(x).shape == (2, 10)


def test_skip_keeps_layers_full_precision() -> None:
    model = timm.create_model("test_cifar_resnet", num_classes=10).eval()
    quantized = quantize_model(model, 4, 4, skip=["conv1", "fc"])
    assert type(quantized.get_submodule("conv1")) is nn.Conv2d
    assert type(quantized.get_submodule("fc")) is nn.Linear
    assert isinstance(quantized.get_submodule("layer1.0.conv1"), QuantConv2d)


@pytest.mark.parametrize("bits", [1, 9, 0])
def test_bits_outside_range(bits: int) -> None:
    model = timm.create_model("test_cifar_resnet", num_classes=10)
    with pytest.raises(QuantizationError, match="2 to 8"):
        quantize_model(model, bits, 4)
    with pytest.raises(QuantizationError, match="abits"):
        quantize_model(model, 4, bits)
