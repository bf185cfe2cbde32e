"""Real int8 models on the CPU through ``torch.ao.quantization``'s FX graph mode (vitlab spec clusterq §2.6).

What a backend does differs from the papers' simulation: BN is folded into the convolution, weights are symmetric
per-channel qint8 (zero point 0), activations affine quint8 at every op boundary (residual adds included), with int32
bias and requantisation. FX graph mode is used rather than eager mode because it quantises functional ReLUs and
residual adds without rewriting the model (eager mode needs ``FloatFunctional`` and module ReLUs). Activation ranges
are calibrated on generated (or ZeroQ-distilled) images, never on real data. 4-bit has no CPU kernel, so W4A4 stays
simulation-only.

torch 2.14 still ships ``torch.ao.quantization`` (with a deprecation warning pointing to torchao); the warning is
silenced here because this path is deliberate and tested.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.fx
from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.quant.losses import BNStatsRecorder, zeroq_bn_loss

__all__ = ["convert_int8", "prepare_int8", "split_bn_act", "zeroq_distill"]


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.ao")
        yield


def split_bn_act(model: nn.Module) -> nn.Module:
    """Replace timm's ``BatchNormAct2d`` (BN with its activation inside) by ``Sequential(BatchNorm2d, act)`` so that FX
    sees a BN module it can fold into the preceding convolution. Works in place; returns ``model``."""
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        return model
    for name, module in list(model.named_modules()):
        if type(module) is not BatchNormAct2d:
            continue
        bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        bn.load_state_dict({k: v for k, v in module.state_dict().items() if k in bn.state_dict()})
        parts: list[nn.Module] = [bn]
        if not isinstance(module.drop, nn.Identity):
            parts.append(module.drop)
        if not isinstance(module.act, nn.Identity):
            parts.append(module.act)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Sequential(*parts) if len(parts) > 1 else bn)
    return model


def prepare_int8(backbone: nn.Module, example: Tensor, engine: str = "x86") -> torch.fx.GraphModule:
    """FX-prepared copy of a float ``backbone`` (BN folded, observers inserted) for the CPU ``engine``."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    if engine not in torch.backends.quantized.supported_engines:
        raise ConfigError(f"int8 engine {engine!r} is not supported by this torch build "
                          f"(available: {', '.join(torch.backends.quantized.supported_engines)})")
    torch.backends.quantized.engine = engine
    model = split_bn_act(copy.deepcopy(backbone)).eval()
    with _quiet():
        return prepare_fx(model, get_default_qconfig_mapping(engine), example_inputs=(example,))


def convert_int8(backbone: nn.Module, calibration: Tensor, engine: str = "x86", batch_size: int = 64) -> nn.Module:
    """A real int8 ``torch.fx.GraphModule`` of the float ``backbone``.

    Args:
        backbone: the float network, taking *normalised* inputs (B, C, H, W) (the classifier's normalisation stays in
            float in front of it).
        calibration: (N, C, H, W) normalised calibration images (generated or distilled, never real data).
    """
    from torch.ao.quantization.quantize_fx import convert_fx

    prepared = prepare_int8(backbone, calibration[:1], engine)
    with torch.no_grad(), _quiet():
        for chunk in calibration.split(batch_size):
            prepared(chunk)
        return convert_fx(prepared)


def zeroq_distill(teacher: nn.Module, shape: tuple[int, int, int, int], steps: int = 200, lr: float = 0.5,
                  seed: int = 0) -> Tensor:
    """ZeroQ-distilled images (normalised input space) of shape (N, C, H, W) for the *backbone* ``teacher``, used to
    calibrate an int8 export of an FP checkpoint without any real image (spec §2.5; plateau schedule omitted)."""
    generator = torch.Generator().manual_seed(seed)
    images = nn.Parameter(torch.randn(shape, generator=generator))
    optimizer = torch.optim.Adam([images], lr=lr)
    teacher.eval()
    for _ in range(steps):
        with BNStatsRecorder(teacher) as recorder:
            teacher(images)
        loss = zeroq_bn_loss(recorder.stats, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return images.detach()
