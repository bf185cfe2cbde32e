"""AR lens: maps from a vision model, blended onto the image, and classical filter lenses (vitlab spec ar.md).

Inspired by the "AR image filter" (Snapchat-style lens) category of the AR survey of Minaee, Liang and Yan
(arXiv 2202.09450). The survey proposes no method; this is a small vitlab feature in its spirit, not an
implementation of it.

Pipeline: :func:`token_map` (B, h, w) -> :func:`postprocess` (per-image min-max, upsample, optional threshold)
-> (B, 1, H, W) mask m -> :func:`blend` onto the image x (B, 3, H, W) in [0, 1] RGB, or a lens through m
(:func:`apply_lut`, :func:`cartoon`, :func:`place_sticker`). Everything is tensor ops: no loop over pixels or tokens,
no randomness, so identical inputs give bitwise-identical outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.errors import ConfigError

__all__ = [
    "BLEND_MODES",
    "LUTS",
    "MAP_SOURCES",
    "SegmentationHead",
    "apply_lut",
    "attention_weights",
    "attribute_maps",
    "bilateral_filter",
    "blend",
    "cartoon",
    "class_activation_map",
    "cls_attention_map",
    "default_sticker",
    "jet",
    "normalize_map",
    "place_sticker",
    "position_features",
    "postprocess",
    "sobel_magnitude",
    "token_map",
    "train_segmentation_head",
    "upsample_map",
]

MAP_SOURCES = ("cam", "attention", "attribute", "segmentation")
BLEND_MODES = ("heatmap", "tint", "background", "recolor")
NORMALIZE_EPS = 1e-8  # spec §2.3: m = (a - min) / (max - min + 1e-8)


# ----------------------------------------------------------------------------------------------------------------------
# Model access


def _backbone(model: nn.Module) -> nn.Module:
    """The timm model inside a vitlab :class:`~vitlab.models.ImageClassifier` (or the model itself)."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(model, "normalize") else model


def _input_normalize(model: nn.Module) -> Callable[[Tensor], Tensor]:
    norm = getattr(model, "normalize", None)
    return norm if isinstance(norm, nn.Module) and _backbone(model) is not model else (lambda t: t)


def _model_name(model: nn.Module) -> str:
    backbone = _backbone(model)
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(backbone).__name__)


class _EvalMode:
    """Eval mode inside the block; every submodule's train flag is restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


def _token_grid(backbone: nn.Module, image_hw: tuple[int, int], num_tokens: int) -> tuple[int, int]:
    """(h, w) patch grid of a token sequence, from the patch size and the input size (never sqrt(N))."""
    patch_embed = getattr(backbone, "patch_embed", None)
    patch = getattr(patch_embed, "patch_size", None)
    if patch is None:
        raise ConfigError(f"{_model_name(backbone)}: features are a token sequence (B, N, C) but the model has no "
                          "patch_embed.patch_size to lay them out on a grid")
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    h, w = image_hw[0] // ph, image_hw[1] // pw
    if h * w != num_tokens:
        raise ConfigError(f"{_model_name(backbone)}: {num_tokens} patch tokens do not fill a {h}x{w} grid "
                          f"(input {image_hw[0]}x{image_hw[1]}, patch {ph}x{pw})")
    return h, w


def _position_layouts(model: nn.Module, features: Tensor, image_hw: tuple[int, int]) -> list[Tensor]:
    """Candidate (B, h, w, C) views of forward_features' output: NCHW maps, NHWC maps, or (B, prefix + h·w, C) tokens.

    A 4-D map whose channel count matches both dim 1 and dim -1 is ambiguous; both layouts are returned, first the
    channels-first one (timm's convention), and the CAM check picks the one the head averages.
    """
    backbone = _backbone(model)
    channels = int(getattr(backbone, "num_features", 0) or 0)
    if features.dim() == 4:
        layouts = []
        if features.shape[1] == channels:
            layouts.append(features.permute(0, 2, 3, 1))
        if features.shape[-1] == channels:
            layouts.append(features)
        if not layouts:
            raise ConfigError(f"{_model_name(model)}: cannot find the {channels} channels in its final map of shape "
                              f"{tuple(features.shape)}")
        return layouts
    if features.dim() == 3:
        prefix = int(getattr(backbone, "num_prefix_tokens", 0))
        tokens = features[:, prefix:]
        h, w = _token_grid(backbone, image_hw, tokens.shape[1])
        return [tokens.reshape(tokens.shape[0], h, w, tokens.shape[2])]
    raise ConfigError(f"{_model_name(model)}: forward_features returned shape {tuple(features.shape)}; expected a "
                      "map (B, C, h, w) / (B, h, w, C) or tokens (B, N, C)")


def position_features(model: nn.Module, x: Tensor, stage: int | None = None) -> Tensor:
    """Per-position features (B, h, w, C) of images x (B, 3, H, W) in [0, 1].

    ``stage=None``: the final map (``forward_features``; hierarchical models' last stage). An integer selects an
    earlier, finer map through timm's ``forward_intermediates(indices=[stage])``.
    """
    if stage is None:
        return _position_layouts(model, cast(Any, model).forward_features(x), (x.shape[-2], x.shape[-1]))[0]
    backbone = _backbone(model)
    if not hasattr(backbone, "forward_intermediates"):
        raise ConfigError(f"stage={stage}: {_model_name(model)} has no forward_intermediates; use stage=None")
    maps = cast(Any, backbone).forward_intermediates(_input_normalize(model)(x), indices=[stage],
                                                     intermediates_only=True)
    return maps[0].permute(0, 2, 3, 1)  # timm returns NCHW intermediates


# ----------------------------------------------------------------------------------------------------------------------
# Map sources (spec §2.2)


def class_activation_map(model: nn.Module, x: Tensor, target: int | Tensor | None = None) -> Tensor:
    """CAM_c(p) = w_cᵀ·f(p) + b_c at each position p of the final map f (exact, gradient-free). -> (B, h, w).

    Needs a head that averages the final per-position features (a per-token LayerNorm before the mean is fine) and
    then applies one linear layer; this is checked on the batch, so the mean of CAM_c over positions equals logit c.
    ``target``: class index, (B,) indices, or None for the predicted class.
    """
    backbone = _backbone(model)
    name = _model_name(model)
    if getattr(backbone, "global_pool", None) == "token":
        raise ConfigError(f"source 'cam': {name} classifies from its CLS token, so it has no exact class activation "
                          "map; use source 'attention'")
    head = cast(Any, backbone).get_classifier() if hasattr(backbone, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"source 'cam': {name}'s classifier is {type(head).__name__}, not one linear layer after "
                          "global average pooling; use source 'attention' (ViTs with a CLS token) or 'segmentation'")
    timm_model: Any = model
    features = timm_model.forward_features(x)
    pooled = timm_model.forward_head(features, pre_logits=True)
    logits = timm_model.forward_head(features)
    if not torch.allclose(head(pooled), logits, rtol=1e-4, atol=1e-5 * max(1.0, float(logits.abs().max()))):
        raise ConfigError(f"source 'cam': {name}'s head does more than one linear layer after the pooled features; "
                          "no exact class activation map")
    scale = max(1.0, float(pooled.abs().max()))
    for tokens in _position_layouts(model, features, (x.shape[-2], x.shape[-1])):
        if torch.allclose(tokens.mean(dim=(1, 2)), pooled, rtol=1e-4, atol=1e-5 * scale):
            break
    else:
        raise ConfigError(f"source 'cam': {name}'s pooled features are not the mean of its final per-position "
                          "features (a CLS token, or a norm after the mean); use source 'attention' for CLS-token "
                          "ViTs")
    if target is None:
        target = logits.argmax(dim=1)
    target = torch.as_tensor(target, device=x.device).long().expand(x.shape[0])
    weight, bias = head.weight[target], head.bias[target] if head.bias is not None else None  # (B, C), (B,)
    cam = torch.einsum("bhwc,bc->bhw", tokens, weight.to(tokens.dtype))
    return cam + bias.view(-1, 1, 1).to(cam.dtype) if bias is not None else cam


def attention_weights(attention: nn.Module, x: Tensor) -> Tensor:
    """softmax(q·kᵀ/√d) of a timm ``Attention`` module for its input x (B, N, C). -> (B, heads, N, N).

    Recomputed from the module's own qkv projection (and q/k norms), so it works when the module itself runs the fused
    scaled-dot-product kernel, which exposes no weights.
    """
    qkv = getattr(attention, "qkv", None)
    heads = getattr(attention, "num_heads", None)
    if not isinstance(qkv, nn.Linear) or heads is None:
        raise ConfigError(f"source 'attention': {type(attention).__name__} has no fused qkv projection and num_heads "
                          "(timm's Attention layout)")
    batch, tokens, _ = x.shape
    q, k, _v = qkv(x).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
    q = q_norm(q) if isinstance(q_norm, nn.Module) else q
    k = k_norm(k) if isinstance(k_norm, nn.Module) else k
    scale = float(getattr(attention, "scale", q.shape[-1] ** -0.5))
    return (q @ k.transpose(-2, -1) * scale).softmax(dim=-1)


def cls_attention_map(model: nn.Module, x: Tensor, return_weights: bool = False) -> Any:
    """CLS → patch attention of the last block, averaged over heads, on the patch grid. -> (B, h, w).

    The weights come from a forward hook on the last block's attention that recomputes softmax(q·kᵀ/√d)
    (:func:`attention_weights`). ``return_weights=True`` also returns the head-averaged (B, N, N) weights, rows summing
    to 1 over CLS, any register tokens and the patches.
    """
    backbone = _backbone(model)
    blocks = getattr(backbone, "blocks", None)
    if getattr(backbone, "cls_token", None) is None or blocks is None or not hasattr(blocks[-1], "attn"):
        raise ConfigError(f"source 'attention': {_model_name(model)} is not a ViT with a CLS token; use source 'cam' "
                          "(global-average-pooled heads) or 'segmentation'")
    captured: dict[str, Tensor] = {}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        captured["weights"] = attention_weights(module, inputs[0])

    handle = blocks[-1].attn.register_forward_hook(hook)
    try:
        cast(Any, model).forward_features(x)
    finally:
        handle.remove()
    weights = captured["weights"].mean(dim=1)  # (B, N, N), averaged over heads
    prefix = int(getattr(backbone, "num_prefix_tokens", 1))
    cls_row = weights[:, 0, prefix:]  # the CLS (and register) columns are dropped
    h, w = _token_grid(backbone, (x.shape[-2], x.shape[-1]), cls_row.shape[1])
    attention_map = cls_row.reshape(x.shape[0], h, w)
    return (attention_map, weights) if return_weights else attention_map


class SegmentationHead(nn.Module):
    """Per-position linear head (C → 1 logit) on frozen features (spec §2.2, source ``segmentation``).

    The features are standardised with per-channel statistics of the training features (buffers), so one learning
    rate suits backbones of any feature scale. ``stage``: which map the head reads (None: the final one).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, num_features: int, stage: int | None = None) -> None:
        super().__init__()
        self.stage = stage
        self.proj = nn.Linear(num_features, 1)
        nn.init.zeros_(self.proj.weight)  # deterministic start: no random init
        nn.init.zeros_(self.proj.bias)
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def forward(self, features: Tensor) -> Tensor:
        """(B, h, w, C) features -> (B, h, w) logits."""
        return self.proj((features - self.mean) / self.std).squeeze(-1)


def train_segmentation_head(model: nn.Module, images: Tensor, masks: Tensor, stage: int | None = None,
                            steps: int = 200, lr: float = 0.05, batch_size: int = 64) -> SegmentationHead:
    """Train a :class:`SegmentationHead` with BCE on a frozen model. images (N, 3, H, W) in [0, 1], masks (N, H, W).

    The masks are area-averaged to the feature grid (soft targets). Batches cycle through the images in order (no
    sampling randomness), so the result is deterministic; the model is not changed.
    """
    with _EvalMode(model), torch.no_grad():
        features = torch.cat([position_features(model, images[i:i + 256], stage)
                              for i in range(0, images.shape[0], 256)])
    grid = (int(features.shape[1]), int(features.shape[2]))
    targets = F.adaptive_avg_pool2d(masks.float().unsqueeze(1), grid).squeeze(1)
    head = SegmentationHead(features.shape[-1], stage).to(features.device)
    flat = features.reshape(-1, features.shape[-1])
    head.mean.copy_(flat.mean(dim=0))
    head.std.copy_(flat.std(dim=0).clamp_min(1e-6))
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    count = features.shape[0]
    for step in range(steps):
        index = torch.arange(step * batch_size, (step + 1) * batch_size) % count
        loss = F.binary_cross_entropy_with_logits(head(features[index]), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return head.eval()


def attribute_maps(model: nn.Module, features: Tensor, top_k: int = 10,
                   attribute: int | None = None) -> tuple[Tensor, Tensor]:
    """TransZero++ attribute attention (spec §2.2 ``attribute``): the AVT decoder's cross-attention of each attribute
    query over the regions, for the ``top_k`` attributes with the highest AVT score ψ (default 10, as TransZero's
    attention_map.py), highest first; or for the one ``attribute`` index given.

    features: the model's input, region features (B, C, rows, cols) of its backbone (not images). Returns the maps
    (B, k, rows, cols), each summing to 1 over the regions, and the attribute indices (B, k). The model runs in eval
    mode without gradients; its train flags are restored.
    """
    if not callable(getattr(model, "attribute_attention_maps", None)):
        raise ConfigError(f"source 'attribute': {_model_name(model)} has no attribute attention; it needs a "
                          "TransZero++ model (vitlab.models.transzero.TransZeroPP) with the AVT sub-net")
    with _EvalMode(model), torch.no_grad():
        maps = cast(Any, model).attribute_attention_maps(features)  # (B, A, rows, cols)
        count = maps.shape[1]
        if attribute is not None:
            if not 0 <= int(attribute) < count:
                raise ConfigError(f"attribute: {attribute} is not an attribute index of this model (0..{count - 1})")
            order = torch.full((maps.shape[0], 1), int(attribute), dtype=torch.long, device=maps.device)
        else:
            if top_k < 1:
                raise ConfigError(f"top_k: expected an integer >= 1, got {top_k}")
            scores = cast(Any, model)(features)["embedding_avt"]  # ψ_AVT (B, A)
            order = scores.topk(min(top_k, count), dim=1).indices
    picked = maps.gather(1, order[:, :, None, None].expand(-1, -1, *maps.shape[2:]))
    return picked, order


def token_map(model: nn.Module, x: Tensor, source: str, **kw: Any) -> Tensor:
    """A (B, h, w) map of images x (B, 3, H, W) in [0, 1] from ``source`` (spec §2.2), on the model's own grid.

    * ``cam``: :func:`class_activation_map` (``target=`` class, default the predicted one);
    * ``attention``: :func:`cls_attention_map`;
    * ``segmentation``: sigmoid of a trained :class:`SegmentationHead` (``head=``) on the frozen features;
    * ``attribute``: TransZero++'s AVT attention of one attribute (:func:`attribute_maps`); here ``x`` is the model's
      input, region features (B, C, rows, cols); ``attribute=`` an index, else ``rank=`` (default 0: the attribute
      with the highest ψ score of each image).

    The model runs in eval mode without gradients; its train flags are restored.
    """
    if source not in MAP_SOURCES:
        raise ConfigError(f"source: unknown map source {source!r} (allowed: {', '.join(MAP_SOURCES)})")
    if source == "attribute":
        maps, _ = attribute_maps(model, x, top_k=int(kw.get("rank", 0)) + 1, attribute=kw.get("attribute"))
        return maps[:, -1]
    with _EvalMode(model), torch.no_grad():
        if source == "cam":
            return class_activation_map(model, x, kw.get("target"))
        if source == "attention":
            return cls_attention_map(model, x)
        head = kw.get("head")
        if not isinstance(head, SegmentationHead):
            raise ConfigError("source 'segmentation': needs head=, a SegmentationHead trained with "
                              "train_segmentation_head on masks")
        return torch.sigmoid(head(position_features(model, x, head.stage)))


# ----------------------------------------------------------------------------------------------------------------------
# Post-processing (spec §2.3)


def normalize_map(a: Tensor) -> Tensor:
    """Per-image min-max: (a − min) / (max − min + 1e-8) for a (B, h, w); a constant map gives zeros, not NaN."""
    flat = a.flatten(1)
    low = flat.min(dim=1).values.view(-1, *([1] * (a.dim() - 1)))
    high = flat.max(dim=1).values.view(-1, *([1] * (a.dim() - 1)))
    return (a - low) / (high - low + NORMALIZE_EPS)


def upsample_map(m: Tensor, size: Sequence[int], mode: str = "bilinear") -> Tensor:
    """(B, h, w) -> (B, 1, H, W); ``bilinear`` (align_corners=False) or ``nearest``. h ≠ w is fine."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"upsample: unknown mode {mode!r} (allowed: bilinear, nearest)")
    size = (int(size[0]), int(size[1]))
    if mode == "nearest":
        return F.interpolate(m.unsqueeze(1), size=size, mode="nearest")
    return F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False)


def postprocess(a: Tensor, size: Sequence[int], mode: str = "bilinear", threshold: float | None = None) -> Tensor:
    """Normalise per image, upsample to ``size`` = (H, W), optionally threshold (m ≥ τ -> 1).

    (B, h, w) -> (B, 1, H, W)."""
    m = upsample_map(normalize_map(a), size, mode)
    return (m >= threshold).to(m.dtype) if threshold is not None else m


# ----------------------------------------------------------------------------------------------------------------------
# Colormap and blending (spec §2.4, §2.5)


def jet(t: Tensor) -> Tensor:
    """Piecewise-linear jet of t in [0, 1], (B, 1, H, W) -> (B, 3, H, W).

    r = clip(1.5 − |4t − 3|, 0, 1), g = clip(1.5 − |4t − 2|, 0, 1), b = clip(1.5 − |4t − 1|, 0, 1): exact and
    dependency-free; an approximation of matplotlib's jet, not identical to it.
    """
    return torch.cat([(1.5 - (4 * t - centre).abs()).clamp(0, 1) for centre in (3.0, 2.0, 1.0)], dim=1)


def _colour(value: Sequence[float] | float | Tensor, like: Tensor) -> Tensor:
    """A colour (3 floats or one) or an image (3, H, W) / (B, 3, H, W) broadcastable against ``like``."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() <= 1:
        return t.reshape(1, -1, 1, 1)
    return t if t.dim() == 4 else t.unsqueeze(0)


def _as_mask(m: Tensor, x: Tensor) -> Tensor:
    m = m.unsqueeze(1) if m.dim() == 3 else m
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"blend: mask of shape {tuple(m.shape)} does not match images {tuple(x.shape)}; expected "
                         "(B, 1, H, W) at the image size (use postprocess)")
    return m.to(x.dtype)


def blend(x: Tensor, m: Tensor, mode: str, alpha: float = 0.5, color: Sequence[float] = (1.0, 0.0, 0.0),
          background: Sequence[float] | float | Tensor = 0.0, lens: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Blend mask m (B, 1, H, W) in [0, 1] onto images x (B, 3, H, W) in [0, 1] RGB. -> (B, 3, H, W).

    * ``heatmap``: (1 − α)·x + α·jet(m);
    * ``tint``: (1 − α·m)·x + α·m·c, c = ``color``;
    * ``background``: m·x + (1 − m)·b, b = ``background`` (a colour or an image);
    * ``recolor``: m·L(x) + (1 − m)·x, L = ``lens`` (default :func:`cartoon`).

    None of these leaves [0, 1] for inputs in range, so nothing is clipped.
    """
    m = _as_mask(m, x)
    if mode == "heatmap":
        return (1 - alpha) * x + alpha * jet(m)
    if mode == "tint":
        return (1 - alpha * m) * x + alpha * m * _colour(color, x)
    if mode == "background":
        return m * x + (1 - m) * _colour(background, x)
    if mode == "recolor":
        return m * (lens or cartoon)(x) + (1 - m) * x
    raise ValueError(f"blend: unknown mode {mode!r} (allowed: {', '.join(BLEND_MODES)})")


# ----------------------------------------------------------------------------------------------------------------------
# Classical lenses (spec §2.6)

_LEVELS = torch.arange(256, dtype=torch.float64) / 255
LUTS: dict[str, Tensor] = {
    "identity": _LEVELS.expand(3, 256).float(),
    "invert": (1 - _LEVELS).expand(3, 256).float(),
    # Warm per-channel tone curves (red kept, green and blue lowered and lifted in the shadows). A per-channel table
    # cannot mix channels, so this is a sepia *tone*, not the grey-then-tint sepia matrix.
    "sepia": torch.stack([0.10 + 0.90 * _LEVELS, 0.06 + 0.80 * _LEVELS, 0.03 + 0.57 * _LEVELS]).float(),
}


def apply_lut(x: Tensor, table: str | Tensor = "sepia") -> Tensor:
    """Per-channel 256-entry lookup, index = round(255·x). x (B, 3, H, W) in [0, 1]; table (3, 256) or a name of
    :data:`LUTS` (identity, sepia, invert). -> (B, 3, H, W)."""
    if isinstance(table, str):
        if table not in LUTS:
            raise ValueError(f"lut: unknown table {table!r} (allowed: {', '.join(LUTS)})")
        table = LUTS[table]
    table = table.to(device=x.device, dtype=x.dtype).expand(x.shape[1], 256)
    index = (x * 255).round().long().clamp(0, 255)
    flat = index.flatten(2)  # (B, 3, H·W)
    return torch.gather(table.unsqueeze(0).expand(x.shape[0], -1, -1), 2, flat).view_as(x)


def bilateral_filter(x: Tensor, window: int = 5, sigma_space: float = 2.0, sigma_range: float = 0.1) -> Tensor:
    """Edge-preserving smoothing of x (B, C, H, W): weights exp(−|Δp|²/2σ_s²)·exp(−|Δx|²/2σ_r²) over a window×window
    neighbourhood (|Δx|² summed over channels, so colour edges stay sharp); reflect padding. -> (B, C, H, W)."""
    if window % 2 == 0 or window < 1:
        raise ValueError(f"bilateral_filter: window must be odd and positive, got {window}")
    batch, channels, height, width = x.shape
    radius = window // 2
    padded = F.pad(x, (radius,) * 4, mode="reflect" if min(height, width) > radius else "replicate")
    patches = F.unfold(padded, window).view(batch, channels, window * window, height, width)
    offsets = torch.arange(window, dtype=x.dtype, device=x.device) - radius
    spatial = torch.exp(-(offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2) / (2 * sigma_space**2)).view(1, -1, 1, 1)
    distance = (patches - x.unsqueeze(2)).pow(2).sum(dim=1)  # (B, k², H, W)
    weights = spatial * torch.exp(-distance / (2 * sigma_range**2))
    return (patches * weights.unsqueeze(1)).sum(dim=2) / weights.sum(dim=1, keepdim=True)


def sobel_magnitude(x: Tensor) -> Tensor:
    """Gradient magnitude of the luminance of x (B, 3, H, W), Sobel kernels / 8 (a unit step gives 0.5 on the two
    columns beside it), replicate padding. -> (B, 1, H, W)."""
    luminance = (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(
        dim=1, keepdim=True) if x.shape[1] == 3 else x.mean(dim=1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device) / 8
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    grad = F.conv2d(F.pad(luminance, (1, 1, 1, 1), mode="replicate"), kernels)
    return grad.pow(2).sum(dim=1, keepdim=True).sqrt()


def cartoon(x: Tensor, window: int = 5, sigma_space: float = 2.0, sigma_range: float = 0.1, levels: int = 6,
            edge_threshold: float = 0.3) -> Tensor:
    """Cartoon lens: bilateral smoothing, posterise to ``levels`` per channel, black outlines where the Sobel
    magnitude of the smoothed luminance exceeds ``edge_threshold``. x (B, 3, H, W) in [0, 1] -> (B, 3, H, W)."""
    if levels < 2:
        raise ValueError(f"cartoon: levels must be >= 2, got {levels}")
    smooth = bilateral_filter(x, window, sigma_space, sigma_range)
    poster = (smooth * (levels - 1)).round() / (levels - 1)
    edges = sobel_magnitude(smooth) > edge_threshold
    return poster.masked_fill(edges, 0.0)


def default_sticker(size: int = 64) -> Tensor:
    """A built-in RGBA sticker (4, size, size): a yellow disc with a dark ring, transparent outside."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    radius = (coords.view(-1, 1) ** 2 + coords.view(1, -1) ** 2).sqrt()
    alpha = (radius <= 1).float()
    ring = ((radius > 0.8) & (radius <= 1)).float()
    rgb = torch.stack([1 - 0.8 * ring, 0.85 * (1 - ring), 0.1 * (1 - ring)])
    return torch.cat([rgb, alpha.unsqueeze(0)])


def place_sticker(x: Tensor, m: Tensor, sticker: Tensor | None = None, scale: float = 0.25) -> Tensor:
    """Alpha-composite an RGBA sticker (4, hs, ws) onto x (B, 3, H, W), centred at each mask's centroid Σp·m/Σm.

    The sticker's longer side becomes ``scale``·min(H, W) (aspect kept); out = s_a·s_rgb + (1 − s_a)·x. An image whose
    mask is empty (Σm = 0) is returned unchanged. -> (B, 3, H, W).
    """
    m = _as_mask(m, x)[:, 0]
    sticker = default_sticker() if sticker is None else sticker.to(x.dtype)
    if sticker.dim() != 3 or sticker.shape[0] != 4:
        raise ValueError(f"sticker: expected an RGBA image (4, h, w), got shape {tuple(sticker.shape)}")
    height, width = x.shape[-2:]
    side = max(1, round(scale * min(height, width)))
    sh, sw = sticker.shape[1:]
    out_h, out_w = (side, max(1, round(side * sw / sh))) if sh >= sw else (max(1, round(side * sh / sw)), side)
    resized = F.interpolate(sticker.unsqueeze(0).to(x.device), size=(out_h, out_w), mode="bilinear",
                            align_corners=False, antialias=True)[0].clamp(0, 1)
    total = m.sum(dim=(1, 2))
    rows = torch.arange(height, dtype=x.dtype, device=x.device)
    cols = torch.arange(width, dtype=x.dtype, device=x.device)
    safe = total.clamp_min(torch.finfo(x.dtype).tiny)
    centre_y = (m.sum(dim=2) * rows).sum(dim=1) / safe
    centre_x = (m.sum(dim=1) * cols).sum(dim=1) / safe
    out = x.clone()
    for b in range(x.shape[0]):  # one composite per image; the pixels are tensor ops
        if total[b] <= 0:
            continue
        top = int(torch.round(centre_y[b] - (out_h - 1) / 2))
        left = int(torch.round(centre_x[b] - (out_w - 1) / 2))
        y0, y1, x0, x1 = max(top, 0), min(top + out_h, height), max(left, 0), min(left + out_w, width)
        if y0 >= y1 or x0 >= x1:
            continue
        piece = resized[:, y0 - top:y1 - top, x0 - left:x1 - left]
        s_alpha, s_rgb = piece[3:4], piece[:3]
        out[b, :, y0:y1, x0:x1] = s_alpha * s_rgb + (1 - s_alpha) * x[b, :, y0:y1, x0:x1]
    return out
