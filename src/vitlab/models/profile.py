"""Parameter and FLOP counts in the papers' convention (fvcore: one multiply-add = one FLOP).

fvcore does not see fused attention kernels (``scaled_dot_product_attention``), so every count runs inside
:func:`explicit_attention`; it then includes q·kᵀ and attn·v like the papers'. :func:`count_flops` is the one FLOP
counter of the project (``vitlab info``, the video evaluation, the model tests and the benchmarks).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import timm
import torch
from torch import Tensor, nn

from vitlab.errors import ConfigError


@contextlib.contextmanager
def explicit_attention(model: nn.Module | None = None) -> Iterator[None]:
    """Inside this block attention is explicit (softmax(q kᵀ) v, which fvcore counts) instead of a fused kernel: in
    every model built here (timm's construction switch) and, when given, in ``model`` (every module with a timm-style
    boolean ``fused_attn`` flag). Both are restored on exit."""
    from timm.layers import config as timm_layer_config

    previous = timm_layer_config._USE_FUSED_ATTN
    flagged = ([m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
               if model is not None else [])
    saved = [m.fused_attn for m in flagged]
    timm.layers.set_fused_attn(False)
    try:
        for m in flagged:
            setattr(m, "fused_attn", False)  # noqa: B010 (nn.Module attribute typing)
        yield
    finally:
        timm_layer_config._USE_FUSED_ATTN = previous
        for m, flag in zip(flagged, saved):
            setattr(m, "fused_attn", flag)  # noqa: B010


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def default_input_size(name: str) -> tuple[int, ...]:
    """The model's default input size from its pretrained config: (C, H, W) or (C, T, H, W) for video."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or cfg.input_size is None:
        return (3, 224, 224)
    return tuple(int(v) for v in cfg.input_size)


def input_size_for(name: str, img_size: int | None = None, frames: int | None = None) -> tuple[int, ...]:
    size = list(default_input_size(name))
    if img_size is not None:
        size[-2:] = [img_size, img_size]
    if frames is not None:
        if len(size) != 4:
            raise ConfigError(f"--frames: {name} takes images (C, H, W), not clips")
        size[1] = frames
    return tuple(size)


class _Features(nn.Module):
    """``model.forward_features`` as a module: the backbone without its classification head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        forward_features = getattr(self.model, "forward_features")  # noqa: B009 (nn.Module attribute typing)
        return forward_features(x)


def flop_counts(model: nn.Module, input_size: tuple[int, ...], backbone_only: bool = False) -> dict[str, int]:
    """fvcore FLOPs per operator (``conv``, ``linear``, ``matmul``, …) of one forward pass of a single input of
    ``input_size`` ((C, H, W), or (C, T, H, W) for video), in eval mode and with explicit attention.

    ``backbone_only`` counts ``forward_features`` (the papers' convention: "we omit the classification head"). A
    DDP / Fabric wrapper is looked through; the input takes the parameters' device and dtype; the model's train/eval
    mode and attention flags are restored afterwards.
    """
    from fvcore.nn import FlopCountAnalysis

    model = getattr(model, "module", model)
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    x = torch.zeros(1, *input_size, device=device, dtype=dtype)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    model.eval()
    try:
        with explicit_attention(model), torch.no_grad():
            analysis = FlopCountAnalysis(_Features(model) if backbone_only else model, x)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return {op: int(n) for op, n in analysis.by_operator().items()}
    finally:
        model.train(was_training)


def count_flops(model: nn.Module, input_size: tuple[int, ...], backbone_only: bool = False) -> int:
    """Total fvcore FLOPs (one multiply-add = one FLOP) of one forward pass: the sum of :func:`flop_counts`."""
    return sum(flop_counts(model, input_size, backbone_only).values())


def model_info(name: str, img_size: int | None = None, frames: int | None = None, flops: bool = True,
               **kwargs: Any) -> dict[str, Any]:
    """``{"model", "params", "flops", "input_size"}`` for a registered model (built with explicit attention)."""
    import vitlab.models  # noqa: F401

    if not timm.is_model(name):
        raise ConfigError(f"model {name!r} is not registered (`vitlab models` lists vitlab's, timm.list_models() all)")
    size = input_size_for(name, img_size, frames)
    create_kwargs = dict(kwargs)
    if len(size) == 4 and (img_size is not None or frames is not None):
        create_kwargs["video_size"] = tuple(size[1:])  # video models fix their windows from the clip size
    elif img_size is not None:
        from vitlab.models.classifier import accepts_img_size

        if accepts_img_size(name):
            create_kwargs["img_size"] = img_size
    model = None
    if not flops:  # counting parameters needs no memory: try the meta device first
        try:
            with explicit_attention(), torch.device("meta"):
                model = timm.create_model(name, pretrained=False, **create_kwargs)
        except (NotImplementedError, RuntimeError):
            model = None
    if model is None:
        with explicit_attention():
            model = timm.create_model(name, pretrained=False, **create_kwargs)
    head = model.get_classifier() if hasattr(model, "get_classifier") else None  # type: ignore[operator]
    head_params = count_params(head) if isinstance(head, nn.Module) else 0
    info: dict[str, Any] = {"model": name, "params": count_params(model),
                            "backbone_params": count_params(model) - head_params, "input_size": list(size)}
    if flops:
        info["flops"] = count_flops(model, size)
    return info
