"""Frame-averaged 2-D classifiers for clips: a timm image model applied to every frame, scores averaged over time.

The order-invariant baseline of the DualFormer small-scale plan (specs/dualformer.md §6): a model that sees each
frame alone and averages over frames cannot tell a motion from its time reversal, so on ``moving_digits`` motion it
must stay at chance, while on ``digit`` labels it does as well as an image model.

Averaging the per-frame logits equals applying the (linear) head to the time-averaged pooled features, so
``forward_head(pre_logits=True)`` returns the time-averaged features and the two views agree exactly.
"""

from __future__ import annotations

from typing import Any

import timm
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.models import register_vitlab_model

__all__ = ["FrameAverage", "frame_avg", "frame_avg_vit"]


class FrameAverage(nn.Module):
    """Apply a 2-D ``backbone`` to each frame of (B, C, T, H, W) clips and average its outputs over T.

    Args:
        backbone: a timm-contract image classifier (``forward_features``, ``forward_head(pre_logits=)``).
        in_chans: input channels of the clips.
    """

    pretrained_cfg: dict[str, Any]
    default_cfg: dict[str, Any]

    def __init__(self, backbone: nn.Module, in_chans: int = 3) -> None:
        super().__init__()
        self.backbone: Any = backbone  # registered as a submodule; typed Any for its timm methods
        self.in_chans = in_chans
        self.num_features = int(getattr(backbone, "num_features"))  # noqa: B009 (timm attribute)
        self.head_hidden_size = self.num_features

    @property
    def num_classes(self) -> int:
        return int(getattr(self.backbone, "num_classes", 0))

    def _frames(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) → (B·T, C, H, W), batch-major."""
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"FrameAverage expects clips (B, {self.in_chans}, T, H, W), got {tuple(x.shape)}")
        return x.transpose(1, 2).flatten(0, 1)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) → per-frame backbone features (B, T, ...) (e.g. (B, T, N, D) tokens for a ViT)."""
        frames = self.backbone.forward_features(self._frames(x))
        return frames.unflatten(0, (x.shape[0], x.shape[2]))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Per-frame features (B, T, ...) → time-averaged logits (B, K), or pooled features (B, D) if ``pre_logits``."""
        batch, frames = x.shape[:2]
        flat = x.flatten(0, 1)
        if pre_logits:
            return self.backbone.forward_head(flat, pre_logits=True).view(batch, frames, -1).mean(dim=1)
        return self.backbone.forward_head(flat).view(batch, frames, -1).mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) → logits (B, K), the mean over frames of the per-frame logits."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is None:
            self.backbone.reset_classifier(num_classes)
        else:
            self.backbone.reset_classifier(num_classes, global_pool)

    def no_weight_decay(self) -> set[str]:
        names = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{n}" for n in names()} if callable(names) else set()


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"url": "", "num_classes": 4, "input_size": (3, 8, 32, 32), "pool_size": None, "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
            "first_conv": "backbone.patch_embed.proj", "classifier": "backbone.head", **kwargs}


default_cfgs = generate_default_cfgs({"frame_avg_vit.untrained": _cfg(),
                                      "frame_avg.untrained": _cfg(first_conv="", classifier="")})


def _frame_size(kwargs: dict[str, Any], default: int) -> int:
    """The frame side from ``video_size`` (T, H, W) or ``img_size``; any number of frames works.

    Also drops the hub arguments timm's factory passes (this model has no pretrained weights).
    """
    for hub_key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(hub_key, None)
    video_size = kwargs.pop("video_size", None)
    img_size = kwargs.pop("img_size", None)
    if video_size is not None:
        video_size = tuple(int(v) for v in video_size)
        if len(video_size) != 3 or video_size[1] != video_size[2]:
            raise ConfigError(f"video_size must be (T, H, W) with square frames, got {video_size}")
        if img_size is not None and int(img_size) != video_size[1]:
            raise ConfigError(f"img_size {img_size} disagrees with video_size {video_size}")
        return video_size[1]
    return int(img_size) if img_size is not None else default


def _finish(model: FrameAverage, variant: str, frame_size: int) -> FrameAverage:
    cfg = default_cfgs[variant].default.to_dict()
    model.pretrained_cfg = model.default_cfg = {**cfg, "num_classes": model.num_classes,
                                                "input_size": (model.in_chans, cfg["input_size"][1], frame_size,
                                                               frame_size)}
    return model


@register_vitlab_model
def frame_avg_vit(pretrained: bool = False, **kwargs: Any) -> FrameAverage:
    """Tiny ViT per frame (patch 8, width 64, depth 4, 2 heads, mean-pooled tokens), logits averaged over time.

    At 8×32×32 with 4 classes: 0.21M parameters and 26 MFLOPs per clip, the compute of ``test_dualformer``
    (20 MFLOPs; a width-128, patch-4 ViT would cost 442 MFLOPs). Any ``VisionTransformer`` argument overrides the
    defaults; ``video_size`` (T, H, W) or ``img_size`` sets the frame size (default 32).
    """
    if pretrained:
        raise ConfigError("frame_avg_vit has no pretrained weights")
    in_chans = int(kwargs.get("in_chans", 3))
    frame_size = _frame_size(kwargs, 32)
    vit_kwargs: dict[str, Any] = dict(img_size=frame_size, patch_size=8, embed_dim=64, depth=4, num_heads=2,
                                      mlp_ratio=4.0, class_token=False, global_pool="avg", num_classes=4)
    vit_kwargs.update(kwargs)
    backbone = timm.models.VisionTransformer(**vit_kwargs)
    return _finish(FrameAverage(backbone, in_chans), "frame_avg_vit", frame_size)


@register_vitlab_model
def frame_avg(pretrained: bool = False, backbone: str = "resnet18", **kwargs: Any) -> FrameAverage:
    """Any timm image model ``backbone`` per frame, logits averaged over time (keyword arguments go to it)."""
    if pretrained:
        raise ConfigError("frame_avg builds its backbone untrained (no downloads); load weights yourself")
    in_chans = int(kwargs.get("in_chans", 3))
    frame_size = _frame_size(kwargs, 32)
    from vitlab.models.classifier import accepts_img_size

    if accepts_img_size(backbone):
        kwargs["img_size"] = frame_size
    kwargs.setdefault("num_classes", 4)
    model = timm.create_model(backbone, pretrained=False, **kwargs)
    return _finish(FrameAverage(model, in_chans), "frame_avg", frame_size)
