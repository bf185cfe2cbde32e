"""A classifier that takes inputs in [0, 1] and normalises them itself.

Attacks, frequency filters and quantization calibration all work on [0, 1] images; keeping normalisation inside the
model (rather than in the data pipeline) means they never have to know the data set's statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import Tensor, nn

from vitlab.config import ConfigError, ModelConfig

__all__ = ["ImageClassifier", "InputNormalize", "build_classifier", "create_backbone"]


class InputNormalize(nn.Module):
    """(x - mean) / std per channel, for images (B, C, H, W) and clips (B, C, T, H, W)."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"InputNormalize: mean {tuple(mean)} and std {tuple(std)} must have the same length, "
                             "std > 0")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32), persistent=True)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32), persistent=True)

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape).to(x.dtype)) / self.std.view(shape).to(x.dtype)


class ImageClassifier(nn.Module):
    """``model(normalize(x))`` with timm's feature API passed through.

    Args:
        model: any timm-contract model (``forward_features``, ``forward_head``, ``num_features``).
        mean, std: per-channel statistics; ``None`` skips normalisation (the model gets [0, 1] inputs).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.normalize: nn.Module = InputNormalize(mean, std) if mean is not None and std is not None else nn.Identity()
        self.model = model

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0))

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) or (B, C, T, H, W) in [0, 1] -> logits (B, num_classes)."""
        return self.model(self.normalize(x))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(self.normalize(x))  # type: ignore[operator]

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        return self.model.forward_head(features, pre_logits=pre_logits)  # type: ignore[operator]

    def embed(self, x: Tensor) -> Tensor:
        """Pooled pre-logit features (B, num_features)."""
        return self.forward_head(self.forward_features(x), pre_logits=True)


def create_backbone(cfg: ModelConfig, num_classes: int, in_chans: int, img_size: int | None = None) -> nn.Module:
    """``timm.create_model`` with the recipe's settings, or a user's ``path/to/file.py:factory`` called with
    ``model.kwargs`` (and ``num_classes`` / ``in_chans`` when it takes them); an unknown model is a
    :class:`ConfigError`."""
    import vitlab.models  # noqa: F401  (registers vitlab models)
    from vitlab.models.external import create_model, is_model_file

    if is_model_file(cfg.name):  # a user's path/to/file.py:factory, called with model.kwargs
        return create_model(cfg.name, dict(cfg.kwargs), cfg.num_classes if cfg.num_classes is not None else num_classes,
                            cfg.in_chans if cfg.in_chans is not None else in_chans, flag="model.name")
    if not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:8]
        raise ConfigError(f"model.name: unknown model {cfg.name!r} (similar: {', '.join(close) or 'none'}; "
                          "`vitlab models` lists them all)")
    kwargs: dict[str, Any] = dict(cfg.kwargs)
    kwargs.setdefault("num_classes", cfg.num_classes if cfg.num_classes is not None else num_classes)
    kwargs.setdefault("in_chans", cfg.in_chans if cfg.in_chans is not None else in_chans)
    if cfg.drop_path_rate:
        kwargs.setdefault("drop_path_rate", cfg.drop_path_rate)
    if cfg.drop_rate:
        kwargs.setdefault("drop_rate", cfg.drop_rate)
    # Models that bake the input size into their position embeddings (ViT, Swin, iFormer, ...) take ``img_size``;
    # others (CNNs) reject it, and are built without.
    if img_size is not None and "img_size" not in kwargs:
        try:
            return timm.create_model(cfg.name, pretrained=False, img_size=img_size, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise ConfigError(f"model.kwargs: {cfg.name} does not accept these arguments ({exc})") from None
    try:
        return timm.create_model(cfg.name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.kwargs: {cfg.name} does not accept these arguments ({exc})") from None


def accepts_img_size(name: str) -> bool:
    """Whether ``timm.create_model(name, img_size=...)`` is accepted (ViT-style models)."""
    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, img_size=32)
    except TypeError as exc:
        return "img_size" not in str(exc)
    except Exception:
        return True
    return True


def build_classifier(cfg: ModelConfig, num_classes: int, in_chans: int, img_size: int,
                     mean: Sequence[float], std: Sequence[float]) -> ImageClassifier:
    """The backbone of the recipe wrapped with input normalisation (skipped when ``model.normalize`` is false)."""
    backbone = create_backbone(cfg, num_classes, in_chans, img_size)
    if cfg.normalize:
        return ImageClassifier(backbone, mean, std)
    return ImageClassifier(backbone)
