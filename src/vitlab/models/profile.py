"""Parameter and FLOP counts in the papers' convention (fvcore: one multiply-add = one FLOP).

fvcore does not see fused attention kernels (``scaled_dot_product_attention``), so models are built with timm's
explicit-attention switch turned on while counting; the count then includes q·kᵀ and attn·v like the papers'.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import timm
import torch
from torch import nn


@contextlib.contextmanager
def explicit_attention() -> Iterator[None]:
    """Models built inside this block use explicit (countable) attention instead of fused kernels."""
    from timm.layers import config as timm_layer_config

    previous = timm_layer_config._USE_FUSED_ATTN
    timm.layers.set_fused_attn(False)
    try:
        yield
    finally:
        timm_layer_config._USE_FUSED_ATTN = previous


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
            raise ValueError(f"--frames: {name} takes images (C, H, W), not clips")
        size[1] = frames
    return tuple(size)


def count_flops(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """fvcore FLOPs of one forward pass of a single input of ``input_size`` (model in eval mode)."""
    from fvcore.nn import FlopCountAnalysis

    model.eval()
    x = torch.zeros(1, *input_size)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())


def model_info(name: str, img_size: int | None = None, frames: int | None = None, flops: bool = True,
               **kwargs: Any) -> dict[str, Any]:
    """``{"model", "params", "flops", "input_size"}`` for a registered model (built with explicit attention)."""
    import vitlab.models  # noqa: F401

    if not timm.is_model(name):
        raise ValueError(f"model {name!r} is not registered (`vitlab models` lists vitlab's, timm.list_models() all)")
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
