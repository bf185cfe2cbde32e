"""Uniform fake quantisation shared by ZeroQ, GDFQ and ClusterQ (vitlab spec clusterq §2.4).

For ``k`` bits and a range ``[min, max]``:

* scale ``s = (2^k - 1) / (max - min)``, integral zero point ``zp = round(s·min) + 2^(k-1)``;
* ``q = clamp(round(s·x - zp), -2^(k-1), 2^(k-1) - 1)`` and the dequantised value is ``(q + zp) / s``.

Weights are quantised per output channel with their current min/max on every forward; activations per tensor, only
right after ReLU/ReLU6, with a range that is calibrated (an EMA of batch min/max, or a running global min/max) and
then frozen. The backward pass is straight-through: the upstream gradient passes unchanged, with no clipping mask.
BatchNorm is not folded. :func:`quantize_model` rewrites any traceable network this way.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.options import MAX_BITS, MIN_BITS  # the recipes' schema checks them without torch

__all__ = ["ActQuantizer", "QuantConv2d", "QuantLinear", "QuantizationError", "activation_quantizers",
           "check_bits", "dequantize", "fake_quantize", "quant_params", "quantize_model", "quantize_to_int",
           "quantized_model_bytes", "set_act_calibration"]


class QuantizationError(ConfigError):
    """A model or setting that cannot be quantised as asked; the message names the layer or option."""


def check_bits(bits: int, key: str) -> int:
    """``bits`` if it is an integer in [2, 8], else a :class:`QuantizationError` naming ``key``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise QuantizationError(f"{key}: got {bits!r}, expected an integer bit width from {MIN_BITS} to {MAX_BITS}")
    return bits


def quant_params(x_min: Tensor, x_max: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Scale and integral zero point of the asymmetric k-bit grid over ``[x_min, x_max]`` (any equal shapes)."""
    levels = 2 ** bits - 1
    scale = levels / torch.clamp(x_max - x_min, min=1e-8)
    zero_point = torch.round(scale * x_min) + 2 ** (bits - 1)
    return scale, zero_point


def quantize_to_int(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """Signed integer codes q in [-2^(k-1), 2^(k-1) - 1] (as float). ``torch.round`` rounds half to even."""
    half = 2 ** (bits - 1)
    return torch.clamp(torch.round(scale * x - zero_point), -half, half - 1)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    return (q + zero_point) / scale


class _StraightThrough(torch.autograd.Function):
    """Fake quantisation whose backward is the identity (straight-through estimator, no clipping mask)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:  # type: ignore[override]
        return dequantize(quantize_to_int(x, scale, zero_point, bits), scale, zero_point)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        return grad, None, None, None


def fake_quantize(x: Tensor, x_min: Tensor, x_max: Tensor, bits: int) -> Tensor:
    """Snap ``x`` to the k-bit grid of ``[x_min, x_max]`` (broadcast against x); straight-through gradient.

    Computed in float32 and returned in ``x``'s dtype: under 16-bit autocast the range floor (1e-8) and the grid
    arithmetic would underflow or round in half precision (an unset range gives an infinite scale).
    """
    scale, zero_point = quant_params(x_min.detach().float(), x_max.detach().float(), bits)
    return _StraightThrough.apply(x.float(), scale, zero_point, bits).to(x.dtype)


def _per_channel_range(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel min and max of a (C_out, ...) weight, shaped to broadcast against it."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return flat.min(dim=1).values.view(shape), flat.max(dim=1).values.view(shape)


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is fake-quantised per output channel on every forward (spec §2.4)."""

    def __init__(self, conv: nn.Conv2d, bits: int) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,  # type: ignore[arg-type]
                         conv.padding_mode)
        self.load_state_dict(conv.state_dict())
        self.weight_bits = check_bits(bits, "quant.wbits")

    def forward(self, x: Tensor) -> Tensor:
        w_min, w_max = _per_channel_range(self.weight)
        return self._conv_forward(x, fake_quantize(self.weight, w_min, w_max, self.weight_bits), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_bits={self.weight_bits}"


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose weight is fake-quantised per output row on every forward (spec §2.4)."""

    def __init__(self, linear: nn.Linear, bits: int) -> None:
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None)
        self.load_state_dict(linear.state_dict())
        self.weight_bits = check_bits(bits, "quant.wbits")

    def forward(self, x: Tensor) -> Tensor:
        w_min, w_max = _per_channel_range(self.weight)
        return F.linear(x, fake_quantize(self.weight, w_min, w_max, self.weight_bits), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_bits={self.weight_bits}"


class ActQuantizer(nn.Module):
    """Per-tensor activation fake quantisation with a calibrated range (spec §2.4).

    ``mode="ema"`` (GDFQ, ClusterQ): an EMA of batch min/max with ``beta = 0.9``, bias-corrected by dividing by
    ``1 - beta^t``, so after the first update the range equals that batch's min/max. ``mode="minmax"`` (ZeroQ): the
    running global min and max. The range moves only while ``calibrating`` is True (set by the method); otherwise it is
    frozen. Buffers: ``raw_min``/``raw_max`` (the uncorrected EMA or the running extrema) and ``updates`` (t).
    """

    raw_min: Tensor
    raw_max: Tensor
    updates: Tensor

    def __init__(self, bits: int, mode: str = "ema", beta: float = 0.9) -> None:
        super().__init__()
        if mode not in ("ema", "minmax"):
            raise QuantizationError(f"quant.act_range: got {mode!r}, expected ema or minmax")
        self.bits = check_bits(bits, "quant.abits")
        self.mode = mode
        self.beta = beta
        self.calibrating = False
        self.register_buffer("raw_min", torch.zeros(()))
        self.register_buffer("raw_max", torch.zeros(()))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def range(self) -> tuple[Tensor, Tensor]:
        """The (min, max) used to quantise: bias-corrected for ``ema``."""
        if self.mode == "ema" and int(self.updates) > 0:
            correction = 1.0 - self.beta ** int(self.updates)
            return self.raw_min / correction, self.raw_max / correction
        return self.raw_min, self.raw_max

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        batch_min, batch_max = x.detach().min(), x.detach().max()
        if self.mode == "ema":
            self.raw_min.mul_(self.beta).add_((1 - self.beta) * batch_min)
            self.raw_max.mul_(self.beta).add_((1 - self.beta) * batch_max)
        elif int(self.updates) == 0:
            self.raw_min.copy_(batch_min)
            self.raw_max.copy_(batch_max)
        else:
            self.raw_min.copy_(torch.minimum(self.raw_min, batch_min))
            self.raw_max.copy_(torch.maximum(self.raw_max, batch_max))
        self.updates += 1

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            self.observe(x)
        x_min, x_max = self.range()
        return fake_quantize(x, x_min, x_max, self.bits)

    def extra_repr(self) -> str:
        x_min, x_max = self.range()
        return f"bits={self.bits}, mode={self.mode}, range=[{float(x_min):.4g}, {float(x_max):.4g}]"


_ACTIVATION_MODULES: dict[str, tuple[type[nn.Module], ...]] = {
    "relu": (nn.ReLU,), "relu6": (nn.ReLU6,), "gelu": (nn.GELU,), "silu": (nn.SiLU,)}
_ACTIVATION_FUNCTIONS: dict[str, tuple[object, ...]] = {
    "relu": (F.relu, torch.relu, torch.relu_, "relu", "relu_"), "relu6": (F.relu6, "relu6"),
    "gelu": (F.gelu, "gelu"), "silu": (F.silu, "silu")}


def _skipped(name: str, skip: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in skip)


def _is_activation(node: torch.fx.Node, root: nn.Module, kinds: Sequence[str]) -> bool:
    if node.op == "call_module":
        module = root.get_submodule(str(node.target))
        return any(isinstance(module, _ACTIVATION_MODULES[k]) for k in kinds)
    if node.op == "call_function":
        if node.target is F.hardtanh and node.args[1:3] == (0.0, 6.0) and "relu6" in kinds:
            return True
        return any(node.target is f for k in kinds for f in _ACTIVATION_FUNCTIONS[k] if not isinstance(f, str))
    if node.op == "call_method":
        return any(node.target == f for k in kinds for f in _ACTIVATION_FUNCTIONS[k] if isinstance(f, str))
    return False


def quantize_model(model: nn.Module, weight_bits: int, act_bits: int, skip: Sequence[str] = (),
                   act_after: Sequence[str] = ("relu", "relu6"), act_mode: str = "ema") -> torch.fx.GraphModule:
    """A fake-quantised copy of ``model`` (spec §2.4), as a ``torch.fx.GraphModule`` with the same parameter names.

    Every ``nn.Conv2d`` / ``nn.Linear`` whose qualified name matches no pattern of ``skip`` gets a per-channel weight
    quantizer; an :class:`ActQuantizer` is inserted after every activation of the kinds in ``act_after`` (module or
    functional call). The network input, residual adds and pooled features stay full precision; BN stays unfolded.

    Args:
        model: a network whose forward ``torch.fx`` can trace (no data-dependent Python control flow).
        skip: shell-style patterns of module names kept in full precision, e.g. ``["conv1", "fc"]``.
    Raises:
        QuantizationError: bad bit widths, unknown activation kinds, or a model that cannot be traced.
    """
    check_bits(weight_bits, "quant.wbits")
    check_bits(act_bits, "quant.abits")
    unknown = [k for k in act_after if k not in _ACTIVATION_MODULES]
    if unknown:
        raise QuantizationError(f"quant.act_after: unknown activation(s) {unknown} (allowed: "
                                f"{', '.join(_ACTIVATION_MODULES)})")
    try:
        # a deep copy first: the traced module would otherwise share BN layers (and biases) with ``model``
        graph_module = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception as exc:  # tracing errors come in many types; the message is what helps
        raise QuantizationError(f"quantize_model: cannot trace {type(model).__name__} with torch.fx "
                                f"({str(exc).splitlines()[0][:200]}); data-dependent control flow in forward is "
                                "not supported") from None
    for name, module in list(graph_module.named_modules()):
        if _skipped(name, skip):
            continue
        if type(module) is nn.Conv2d:
            _set_submodule(graph_module, name, QuantConv2d(module, weight_bits))
        elif type(module) is nn.Linear:
            _set_submodule(graph_module, name, QuantLinear(module, weight_bits))
    graph = graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if not _is_activation(node, graph_module, act_after):
            continue
        target = f"act_quant_{count}"
        count += 1
        graph_module.add_submodule(target, ActQuantizer(act_bits, act_mode))
        with graph.inserting_after(node):
            quant_node = graph.call_module(target, (node,))
        node.replace_all_uses_with(quant_node, delete_user_cb=_not(quant_node))
    graph.lint()
    graph_module.recompile()
    return graph_module


def _not(excluded: torch.fx.Node):  # noqa: ANN202
    return lambda user: user is not excluded


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def activation_quantizers(model: nn.Module) -> list[ActQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActQuantizer)]


def set_act_calibration(model: nn.Module, calibrating: bool) -> None:
    """Let every activation range of ``model`` move (True) or freeze it (False)."""
    for quantizer in activation_quantizers(model):
        quantizer.calibrating = calibrating


def quantized_model_bytes(model: nn.Module) -> dict[str, float]:
    """Storage of the weights at their bit widths: quantised conv/linear weights at k bits (plus a float32 scale and
    zero point per channel), everything else (biases, BN, full-precision layers) at 32 bits."""
    quant_bits = 0.0
    fp_bits = 0.0
    counted: set[int] = set()
    for module in model.modules():
        if isinstance(module, (QuantConv2d, QuantLinear)):
            counted.add(id(module.weight))
            quant_bits += module.weight.numel() * module.weight_bits + module.weight.shape[0] * 2 * 32
    for p in model.parameters():
        if id(p) not in counted:
            fp_bits += p.numel() * 32
    for name, b in model.named_buffers():
        if b.is_floating_point() and "running" in name:
            fp_bits += b.numel() * 32
    return {"quantized_bytes": (quant_bits + fp_bits) / 8, "fp32_bytes": sum(
        p.numel() * 4 for p in model.parameters()) + sum(b.numel() * 4 for n, b in model.named_buffers()
                                                         if b.is_floating_point() and "running" in n)}

