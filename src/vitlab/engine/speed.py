"""Settings for speed: ``train.compile``, ``train.matmul_precision`` and ``train.channels_last`` (docs/engine.md).

Each is ``auto`` by default and resolved once, at the start of a run, for the device the run is on:

- on the CPU: no compilation, float32 matrix products at ``highest`` precision, the default memory format;
- on CUDA: ``torch.compile`` of the modules the method names (:meth:`~vitlab.methods.base.Method.compiled_modules`),
  ``high`` precision (TF32 tensor cores for float32 products), and channels-last weights and inputs when the method
  holds a ``Conv2d`` (transformers without convolutions keep the default format).

The resolved values are written into the run folder's ``config.yaml``; checkpoints keep ``auto``, so a run resumed
on another device resolves again. The engine asks the method which modules to compile: it never names a method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from vitlab.config import TrainConfig

__all__ = ["SpeedSettings", "apply_speed", "holds_conv2d", "inputs_channels_last", "matmul_precision",
           "resolve_speed"]


@dataclass(frozen=True)
class SpeedSettings:
    """The resolved ``train.compile``, ``train.matmul_precision`` and ``train.channels_last`` of a run."""

    compile: bool
    matmul_precision: Literal["highest", "high", "medium"]  # torch.set_float32_matmul_precision
    channels_last: bool


def holds_conv2d(module: nn.Module) -> bool:
    """Whether ``module`` contains a 2-D convolution (the models channels-last memory helps)."""
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def resolve_speed(train: TrainConfig, device_type: str, method: nn.Module) -> SpeedSettings:
    """The settings of ``train`` with every ``auto`` resolved for ``device_type`` (``"cpu"``, ``"cuda"``, ...).

    ``auto`` means: compile and ``high`` precision on CUDA only; channels-last on CUDA only, and only for a
    ``method`` that holds a ``Conv2d``. Explicit values are kept as they are, on any device.
    """
    cuda = device_type == "cuda"
    compile_ = cuda if train.compile == "auto" else bool(train.compile)
    precision = ("high" if cuda else "highest") if train.matmul_precision == "auto" else train.matmul_precision
    precision = cast(Literal["highest", "high", "medium"], precision)  # "auto" is resolved above
    channels_last = (cuda and holds_conv2d(method)) if train.channels_last == "auto" else bool(train.channels_last)
    return SpeedSettings(compile=compile_, matmul_precision=precision, channels_last=channels_last)


def apply_speed(settings: SpeedSettings, method: Any) -> None:
    """Put ``method`` in the resolved memory format and compile the modules it names, in place.

    Channels-last converts every 4-D parameter and buffer of the method (its convolution weights). Compilation uses
    ``nn.Module.compile``, which keeps each module and its ``state_dict`` keys as they are (checkpoints and EMA copies
    see the plain module); the first step then takes the compile time. The matmul precision is set by
    :func:`matmul_precision` around the run.
    """
    if settings.channels_last:
        method.to(memory_format=torch.channels_last)
    if settings.compile:
        for module in method.compiled_modules():
            module.compile()


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """``torch.set_float32_matmul_precision(precision)`` inside the block; the process's setting is restored after."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def inputs_channels_last(batch: Any) -> Any:
    """A batch (a mapping) with its 4-D floating-point tensors (images, B x C x H x W) in channels-last format."""
    if not isinstance(batch, Mapping):
        return batch
    return {k: v.contiguous(memory_format=torch.channels_last) if _is_image_batch(v) else v for k, v in batch.items()}


def _is_image_batch(value: Any) -> bool:
    return isinstance(value, Tensor) and value.ndim == 4 and value.is_floating_point()
