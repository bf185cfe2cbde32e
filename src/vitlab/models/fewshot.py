"""Few-shot ViT backbones of SUN (Dong et al., ECCV 2022, arXiv 2203.07057); vitlab spec specs/sun.md sections 2.6, 6.

The official code (DongSky/few-shot-vit) trains ~12.5M-parameter transformers on 80x80 images so that they compare
fairly with a ResNet-12. All three share a ResNet-12-like convolutional stem (`ConvStem`) that divides the image by 4
and end in a 5x5 final map, the grid SUN's patch labels live on:

- `visformer_micro_80` (the paper's "visformer_small_80"), `FewShotVisformer`: 4 conv-only blocks at 20x20 (128-d),
  2 attention blocks at 10x10 (256-d), 3 at 5x5 (512-d), BatchNorm throughout; 12,531,392 backbone parameters,
  5x5x512 final map.
- `nest_micro_resembed_80`, `FewShotNest`: timm's NesT with the conv stem; dims (128, 384, 512), heads (4, 12, 16),
  depths (2, 2, 2); 12,795,456 parameters, 5x5x512.
- `lvvit_micro_80`, `LVViT`: conv stem + 4x4 patch projection, class token, 8 blocks of 384-d, 6 heads, MLP ratio 3,
  residual branches divided by 2; 12,597,312 parameters, 5x5x384.

The counts exclude the classifier head (the official encoders have none) and match the spec's 12.53M / 12.80M /
12.60M. fvcore FLOPs of one 80x80 image (`vitlab info`, 64-class head): 1.0176 G / 1.3994 G / 0.6014 G.

The CNN they are compared with, `resnet12_80` (`ResNet12`, Meta-Baseline's ResNet-12: widths 64-160-320-640, a
max-pool after each of the 4 residual blocks), has 12,424,320 backbone parameters and a 5x5x640 final map at 80 px.

The `test_*_fs32` variants are a few hundred thousand parameters: 32x32 inputs and a 4x4 final map (16 patches), for
the spec's small-scale plan (section 6) and the registry-wide model tests.

`feature_map(model, x)` gives any backbone's final spatial map (B, C, h, w) (these, timm ViTs and CNNs, vitlab's
iFormer); `pooled_feature` is its global average pool. The models' own heads pool the same way, except `LVViT`, whose
official head reads the class token (`global_pool="token"`); SUN's pooled feature for it is still the map's average.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, to_2tuple, trunc_normal_, use_fused_attn
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models.nest import Nest
from torch import Tensor, nn

from vitlab.errors import CheckpointError, ConfigError
from vitlab.models import register_vitlab_model
from vitlab.models.state_dict import state_dict_mismatch

__all__ = [
    "ConvStem",
    "FewShotVisformer",
    "FewShotNest",
    "LVViT",
    "NoFeatureMapError",
    "ResNet12",
    "checkpoint_filter_fn",
    "feature_map",
    "pooled_feature",
]


# --------------------------------------------------------------------------------------------------------------------
# Shared stem
# --------------------------------------------------------------------------------------------------------------------


class ConvStem(nn.Module):
    """ResNet-12-like residual stem of all three official backbones: (B, 3, H, W) -> (B, out_dim, H/4, W/4).

    conv3x3/2 -> BN -> LeakyReLU(0.1) -> conv3x3 -> BN -> LeakyReLU -> conv3x3 -> BN, plus a conv3x3/2 -> BN shortcut,
    LeakyReLU, then a 2x2 max-pool. `pool=False` drops the max-pool (stride 2), for the 32-px variants.
    """

    def __init__(self, in_chans: int, hidden_dim: int, out_dim: int, pool: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, hidden_dim, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden_dim)
        self.conv2 = nn.Conv2d(hidden_dim, out_dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_dim)
        self.conv3 = nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_dim)
        self.downsample = nn.Sequential(
            nn.Conv2d(in_chans, out_dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_dim)
        )
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.stride = 4 if pool else 2

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.pool(self.act(out + self.downsample(x)))


def _resize_grid(pos_embed: Tensor, height: int, width: int) -> Tensor:
    """(1, C, h, w) position embedding -> (1, C, height, width), bicubic; unchanged when the size already matches."""
    if pos_embed.shape[-2:] == (height, width):
        return pos_embed
    return F.interpolate(pos_embed, size=(height, width), mode="bicubic", align_corners=False)


def _check_pool(pool_type: str, name: str, allowed: Sequence[str]) -> str:
    if pool_type not in allowed:
        raise ConfigError(f"{name}: global_pool must be one of {', '.join(map(repr, allowed))}, got {pool_type!r}")
    return pool_type


# --------------------------------------------------------------------------------------------------------------------
# Visformer (official: sun_meta_training/models/visformer.py, `visformer_micro_80`)
# --------------------------------------------------------------------------------------------------------------------


class ConvMlp(nn.Module):
    """Visformer MLP on (B, C, H, W) maps: 1x1 conv -> GELU -> [grouped 3x3 conv -> GELU] -> 1x1 conv, no biases.

    With the spatial conv (stage 1) the hidden width is 2C, as in the official code; otherwise mlp_ratio * C.
    """

    def __init__(self, dim: int, mlp_ratio: float, spatial: bool, groups: int, drop: float = 0.0) -> None:
        super().__init__()
        hidden = dim * 2 if spatial else int(dim * mlp_ratio)
        self.conv1 = nn.Conv2d(dim, hidden, 1, bias=False)
        self.act1 = nn.GELU()
        self.conv2: nn.Module = nn.Identity()
        self.act2: nn.Module = nn.Identity()
        if spatial:
            self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=groups, bias=False)
            self.act2 = nn.GELU()
        self.conv3 = nn.Conv2d(hidden, dim, 1, bias=False)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act1(self.conv1(x)))
        x = self.act2(self.conv2(x))
        return self.drop(self.conv3(x))


class ConvAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a (B, C, H, W) map; 1x1-conv q/k/v and output projection
    without biases. head_dim = C // num_heads (so 6 heads of 42 channels at 256-d: the projection maps 252 -> 256)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Conv2d(dim, 3 * num_heads * self.head_dim, 1, bias=False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Conv2d(num_heads * self.head_dim, dim, 1, bias=False)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        qkv = self.qkv(x).reshape(batch, 3, self.num_heads, self.head_dim, height * width).permute(1, 0, 2, 4, 3)
        q, k, v = qkv.unbind(0)  # (B, heads, HW, head_dim)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
            x = attn @ v
        x = x.transpose(-2, -1).reshape(batch, self.num_heads * self.head_dim, height, width)
        return self.proj_drop(self.proj(x))


class VisformerBlock(nn.Module):
    """Pre-norm residual block on (B, C, H, W): [BN -> attention] (stages 2-3) then BN -> `ConvMlp`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attention: bool,
        mlp_ratio: float = 4.0,
        groups: int = 8,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1: nn.Module = nn.BatchNorm2d(dim) if attention else nn.Identity()
        self.attn: nn.Module | None = ConvAttention(dim, num_heads, attn_drop, drop) if attention else None
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, mlp_ratio, spatial=not attention, groups=groups, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.attn is not None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerge(nn.Module):
    """2x2 stride-2 conv (with bias) -> BN: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, 2, stride=2)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class MapHead:
    """The classifier end of a backbone whose features are a (B, C, h, w) map: average pool (``global_pool="avg"``),
    head dropout, linear head (FewShotVisformer and ResNet12)."""

    global_pool: str
    head_drop: nn.Module
    head: nn.Module

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C, h, w) map -> (B, num_classes) logits, or the (B, C) average with pre_logits=True."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]


class FewShotVisformer(MapHead, nn.Module):
    """Visformer as SUN configures it (spec section 2.6): conv stem (/4), stage 1 of conv-only blocks at embed_dim/2,
    then a 2x2 patch merge and attention blocks at embed_dim and again at 2*embed_dim; a learned position embedding
    added at the start of every stage; BatchNorm everywhere, final BN, global average pool, linear head.

    forward_features: (B, 3, H, W) -> (B, 2*embed_dim, H/16, W/16) (H/8 with stem_pool=False), channels-first.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 80,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 256,
        depths: Sequence[int] = (4, 2, 3),
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        groups: int = 8,
        stem_dim: int = 64,
        stem_pool: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if len(depths) != 3:
            raise ConfigError(f"FewShotVisformer: depths needs 3 stages, got {tuple(depths)}")
        dims = (embed_dim // 2, embed_dim, embed_dim * 2)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.global_pool = _check_pool(global_pool, "FewShotVisformer", ("avg", ""))
        self.stem = ConvStem(in_chans, stem_dim, dims[0], pool=stem_pool)
        height, width = (size // self.stem.stride for size in to_2tuple(img_size))
        self.pos_embed1 = nn.Parameter(torch.zeros(1, dims[0], height, width))
        self.pos_embed2 = nn.Parameter(torch.zeros(1, dims[1], height // 2, width // 2))
        self.pos_embed3 = nn.Parameter(torch.zeros(1, dims[2], height // 4, width // 4))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [0, depths[0], depths[0] + depths[1]]

        def stage(index: int) -> nn.Sequential:
            return nn.Sequential(
                *[
                    VisformerBlock(
                        dims[index],
                        num_heads,
                        attention=index > 0,
                        mlp_ratio=mlp_ratio,
                        groups=groups,
                        drop=drop_rate,
                        attn_drop=attn_drop_rate,
                        drop_path=rates[starts[index] + i],
                    )
                    for i in range(depths[index])
                ]
            )

        self.stage1 = stage(0)
        self.patch_embed2 = PatchMerge(dims[0], dims[1])
        self.stage2 = stage(1)
        self.patch_embed3 = PatchMerge(dims[1], dims[2])
        self.stage3 = stage(2)
        self.norm = nn.BatchNorm2d(dims[2])
        self.head_drop = nn.Dropout(drop_rate)
        self.head: nn.Module = nn.Linear(dims[2], num_classes) if num_classes > 0 else nn.Identity()
        self.num_stages = 3
        self.feature_info = [
            dict(num_chs=dims[i], reduction=self.stem.stride * 2**i, module=f"stage{i + 1}") for i in range(3)
        ]
        self.init_weights()

    def init_weights(self) -> None:
        """Official init: Kaiming-normal (fan-out) convs, truncated-normal (0.02) position embeddings and linears."""
        for pos_embed in (self.pos_embed1, self.pos_embed2, self.pos_embed3):
            trunc_normal_(pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"pos_embed{index + 1}" for index in range(self.num_stages)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem|^pos_embed1",
            blocks=[
                (r"^stage(\d+)" if coarse else r"^stage(\d+)\.(\d+)", None),
                (r"^patch_embed(\d+)|^pos_embed(\d+)", (0,)),
                (r"^norm", (99999,)),
            ],
        )

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool, "FewShotVisformer", ("avg", ""))
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def _run_stage(self, index: int, x: Tensor) -> Tensor:
        """Stage `index` (0-2): its stem or patch merge, the position embedding (resized to other sizes), the blocks."""
        x = getattr(self, "stem" if index == 0 else f"patch_embed{index + 1}")(x)
        pos_embed = getattr(self, f"pos_embed{index + 1}")
        return getattr(self, f"stage{index + 1}")(self.pos_drop(x + _resize_grid(pos_embed, x.shape[-2], x.shape[-1])))

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C3, h, w) final BN-normed map; position embeddings are resized for other input sizes."""
        for index in range(self.num_stages):
            x = self._run_stage(index, x)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs as (B, C_s, H_s, W_s) maps (timm's feature API); `norm` applies the final BatchNorm to the
        last stage's output. Returns the maps, or (final normed map, maps) unless `intermediates_only`."""
        if output_fmt != "NCHW":
            raise ValueError(f"FewShotVisformer.forward_intermediates: output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(self.num_stages, indices)
        intermediates = []
        for index in range(max_index + 1 if stop_early else self.num_stages):
            x = self._run_stage(index, x)
            if index in take:
                intermediates.append(self.norm(x) if norm and index == self.num_stages - 1 else x)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages (with their merges and position embeddings), norm and head the requested features skip."""
        take, max_index = feature_take_indices(self.num_stages, indices)
        for index in range(max_index + 1, self.num_stages):
            for name in (f"patch_embed{index + 1}", f"pos_embed{index + 1}", f"stage{index + 1}"):
                delattr(self, name)
        self.num_stages = max_index + 1
        self.feature_info = self.feature_info[: self.num_stages]
        if prune_norm:
            self.norm = nn.Identity()  # type: ignore[assignment]
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_feature_map(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w): the final map SUN's local classifier reads (spec section 2.2 (a))."""
        return self.forward_features(x)



# --------------------------------------------------------------------------------------------------------------------
# NesT with the conv stem (official: sun_meta_training/models/nest_resembed.py, `nest_micro_resembed_80`)
# --------------------------------------------------------------------------------------------------------------------


class FewShotNest(Nest):
    """timm's `Nest` (Aggregating Nested Transformers) whose patch embedding is replaced by `ConvStem` ("resembed").

    forward_features: (B, 3, img, img) -> (B, embed_dims[-1], g, g) LayerNorm-ed map, g = img / (4 * 2**(levels-1))
    (stride 2 instead of 4 in the stem with stem_pool=False). NesT's block position embeddings fix the input size.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 80,
        embed_dims: tuple[int, ...] = (128, 384, 512),
        stem_dim: int = 64,
        stem_pool: bool = True,
        **kwargs: Any,
    ) -> None:
        in_chans = kwargs.get("in_chans", 3)
        if isinstance(img_size, Sequence):
            if img_size[0] != img_size[1]:
                raise ValueError(f"FewShotNest: NesT takes square inputs only, got img_size={tuple(img_size)}")
            img_size = img_size[0]
        stride = 4 if stem_pool else 2
        super().__init__(img_size=img_size, patch_size=stride, embed_dims=tuple(embed_dims), **kwargs)
        self.img_size = img_size
        stem = ConvStem(in_chans, stem_dim, embed_dims[0], pool=stem_pool)
        self.patch_embed = stem  # type: ignore[assignment]  # replaces timm's PatchEmbed; also (B, C, H/4, W/4)
        for module in self.patch_embed.modules():
            if isinstance(module, nn.Conv2d):
                trunc_normal_(module.weight, std=0.02, a=-2, b=2)
        for index, info in enumerate(self.feature_info):
            info["reduction"] = stride * 2**index

    def forward_features(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"FewShotNest: built for {self.img_size}x{self.img_size} inputs (its block position embeddings fix "
                f"the size), got {x.shape[-2]}x{x.shape[-1]}; pass img_size={x.shape[-1]} to create_model for "
                "another square size"
            )
        return super().forward_features(x)

    def forward_feature_map(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w) final LayerNorm-ed map."""
        return self.forward_features(x)


# --------------------------------------------------------------------------------------------------------------------
# LV-ViT (official: sun_meta_training/models/lvvit.py, `lvvit_micro_80`)
# --------------------------------------------------------------------------------------------------------------------


class LVViTBlock(nn.Module):
    """Pre-LayerNorm transformer block whose residual branches are divided by `skip_lam` (LV-ViT's residual scaling).

    (B, N, C) -> (B, N, C). q/k/v have no bias; the projection and the MLP do.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        skip_lam: float,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import Attention

        self.skip_lam = skip_lam
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=False, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x))) / self.skip_lam
        return x + self.drop_path(self.mlp(self.norm2(x))) / self.skip_lam


class LVViT(nn.Module):
    """LV-ViT as SUN configures it: `ConvStem` (hidden = out = stem_dim, /4) then a (patch_size/4)-stride conv to
    embed_dim tokens, a class token, learned position embeddings, `LVViTBlock`s, a final LayerNorm.

    forward_features: (B, 3, H, W) -> (B, 1 + h*w, C) tokens (class token first), h = H / patch_size, like timm ViTs.
    The official head reads the class token (global_pool="token"); "avg" averages the patch tokens.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 80,
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 8,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        skip_lam: float = 2.0,
        stem_dim: int = 96,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "token",
    ) -> None:
        super().__init__()
        if patch_size % 4 or patch_size < 4:
            raise ConfigError(f"LVViT: patch_size must be a multiple of 4 (the stem divides by 4), got {patch_size}")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.global_pool = _check_pool(global_pool, "LVViT", ("token", "avg", ""))
        self.patch_size = patch_size
        self.num_prefix_tokens = 1
        self.stem = ConvStem(in_chans, stem_dim, stem_dim)
        self.proj = nn.Conv2d(stem_dim, embed_dim, patch_size // 4, stride=patch_size // 4)
        self.grid_size = (to_2tuple(img_size)[0] // patch_size, to_2tuple(img_size)[1] // patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(
            *[
                LVViTBlock(embed_dim, num_heads, mlp_ratio, skip_lam, drop_rate, attn_drop_rate, rates[i])
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head: nn.Module = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Official init: truncated-normal (0.02) linears, class token and position embedding; default convs."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^cls_token|^pos_embed|^stem|^proj", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool, "LVViT", ("token", "avg", ""))
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def _embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(self.stem(x))
        grid = (x.shape[-2], x.shape[-1])
        pos_embed: Tensor = self.pos_embed
        if grid != self.grid_size:  # resize the patch part of the position embedding for another input size
            patch_pos = pos_embed[:, 1:].reshape(1, *self.grid_size, -1).permute(0, 3, 1, 2)
            patch_pos = _resize_grid(patch_pos, *grid).flatten(2).transpose(1, 2)
            pos_embed = torch.cat([pos_embed[:, :1], patch_pos], dim=1)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        return self.pos_drop(x + pos_embed), grid

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + h*w, C) final-normed tokens."""
        tokens, _ = self._embed(x)
        return self.norm(self.blocks(tokens))

    def forward_feature_map(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w): the patch tokens (class token dropped) on their grid."""
        tokens, (height, width) = self._embed(x)
        tokens = self.norm(self.blocks(tokens))[:, 1:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, 1 + N, C) tokens -> logits, or the (B, C) class token ("token") / patch-token mean ("avg")."""
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, 1:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------------------------------------
# ResNet-12 (the CNN row of SUN's comparisons; Meta-Baseline's backbone, Chen et al. 2021)
# --------------------------------------------------------------------------------------------------------------------


class ResNet12Block(nn.Module):
    """conv3x3 -> BN -> LeakyReLU(0.1), twice, conv3x3 -> BN; plus a conv1x1 -> BN shortcut; LeakyReLU; 2x2 max-pool
    (`pool=False`: none)."""

    def __init__(self, in_dim: int, out_dim: int, pool: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_dim)
        self.conv3 = nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_dim)
        self.downsample = nn.Sequential(nn.Conv2d(in_dim, out_dim, 1, bias=False), nn.BatchNorm2d(out_dim))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.pool(self.act(out + self.downsample(x)))


class ResNet12(MapHead, nn.Module):
    """ResNet-12: four residual blocks (3 convs each, widths `dims`), a 2x2 max-pool after each of the first
    `pooled` blocks, global average pool, linear head. Meta-Baseline's (64, 160, 320, 640) with 4 pools gives a 5x5x640
    final map at 80 px, the grid SUN's ViTs end in; the 32-px variant pools 3 times for a 4x4 map.

    forward_features: (B, 3, H, W) -> (B, dims[-1], H / 2**pooled, W / 2**pooled).
    """

    def __init__(self, img_size: int | tuple[int, int] = 80, in_chans: int = 3, num_classes: int = 1000,
                 dims: Sequence[int] = (64, 160, 320, 640), pooled: int = 4, drop_rate: float = 0.0,
                 global_pool: str = "avg") -> None:
        super().__init__()
        if len(dims) != 4 or not 0 <= pooled <= 4:
            raise ValueError(f"ResNet12: needs 4 widths and 0-4 pooled blocks, got dims {tuple(dims)}, pooled {pooled}")
        del img_size  # any size; kept for timm's create_model
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.global_pool = _check_pool(global_pool, "ResNet12", ("avg", ""))
        widths = (in_chans, *dims)
        self.stem = nn.Identity()  # the first block reads the image (first_conv: layer1.conv1)
        self.layers = nn.Sequential(*[ResNet12Block(widths[i], widths[i + 1], pool=i < pooled) for i in range(4)])
        self.head_drop = nn.Dropout(drop_rate)
        self.head: nn.Module = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool, "ResNet12", ("avg", ""))
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w), the last block's output (SUN's final map)."""
        return self.layers(self.stem(x))



# --------------------------------------------------------------------------------------------------------------------
# A uniform final map for SUN: any backbone -> (B, C, h, w)
# --------------------------------------------------------------------------------------------------------------------


class NoFeatureMapError(ConfigError):
    """The backbone gives no final spatial map (SUN's patch labels and local classifier need one)."""


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _channels_last(model: nn.Module) -> bool:
    from vitlab.models.iformer import InceptionTransformer

    return isinstance(model, InceptionTransformer) or getattr(model, "output_fmt", "NCHW") == "NHWC"


def _token_grid(model: nn.Module, x: Tensor) -> tuple[int, int] | None:
    """The (h, w) patch grid of a token model for input x, from its patch embedding (never from a square root)."""
    patch_embed = getattr(model, "patch_embed", None)
    size = (x.shape[-2], x.shape[-1])
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
        height, width = patch_embed.dynamic_feat_size(size)
        return int(height), int(width)
    patch = getattr(patch_embed, "patch_size", None) or getattr(model, "patch_size", None)
    if patch is None:
        return None
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return size[0] // patch_h, size[1] // patch_w


def feature_map(model: nn.Module, x: Tensor) -> Tensor:
    """(B, 3, H, W) images -> (B, C, h, w): the backbone's final spatial map after its last norm (spec section 2.2).

    - vitlab few-shot backbones: their `forward_feature_map`;
    - channels-last models (vitlab's iFormer, timm models with output_fmt "NHWC" such as Swin): forward_features
      permuted to channels-first;
    - CNNs (a 4-D forward_features): as is;
    - token models (timm ViTs, DeiT, EVA, ...): forward_features without the class / register tokens
      (`num_prefix_tokens`), reshaped to the patch grid h x w that the patch embedding gives for this input.

    Raises `NoFeatureMapError` (a ValueError) naming the model when it has no such map.
    """
    own = getattr(model, "forward_feature_map", None)
    if callable(own):
        return own(x)
    forward_features = getattr(model, "forward_features", None)
    if not callable(forward_features):
        raise NoFeatureMapError(f"{_model_name(model)} has no forward_features, so no final spatial map for SUN")
    features = forward_features(x)
    if not isinstance(features, Tensor):
        raise NoFeatureMapError(
            f"{_model_name(model)}.forward_features returns {type(features).__name__}, not a feature map tensor"
        )
    if features.ndim == 4:
        return features.permute(0, 3, 1, 2) if _channels_last(model) else features
    if features.ndim == 3:
        grid = _token_grid(model, x)
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        if grid is not None and features.shape[1] - prefix == grid[0] * grid[1]:
            return features[:, prefix:].transpose(1, 2).reshape(features.shape[0], -1, *grid)
        raise NoFeatureMapError(
            f"{_model_name(model)} gives {features.shape[1]} tokens, which are not {prefix} prefix tokens plus a "
            f"patch grid{'' if grid is None else f' of {grid[0]}x{grid[1]}'} for a {x.shape[-2]}x{x.shape[-1]} "
            "input, so no final spatial feature map for SUN"
        )
    raise NoFeatureMapError(
        f"{_model_name(model)}.forward_features gives a {features.ndim}-D {tuple(features.shape)} output, not an image "
        "feature map (B, C, h, w) or patch tokens (B, N, C), so no final spatial feature map for SUN"
    )


def pooled_feature(feature_map: Tensor) -> Tensor:
    """(B, C, h, w) map -> (B, C) global average pool (spec section 2.2 (b)); SUN's pooled feature for every
    backbone, also for `LVViT` whose own classifier head reads the class token."""
    return feature_map.mean(dim=(2, 3))


# --------------------------------------------------------------------------------------------------------------------
# Official checkpoints (DongSky/few-shot-vit: teacher, SUN and Meta-Baseline stages all keep the backbone as `encoder`)
# --------------------------------------------------------------------------------------------------------------------


def _convert_official_key(key: str) -> str:
    """Official backbone key -> vitlab key: Visformer's BatchNorm wrappers (`norm1.bn.weight`) lose their `bn.`;
    LV-ViT's `patch_embed.{conv,bn,downsample}*` stem is `stem.*` and its `patch_embed.proj` is `proj`."""
    key = re.sub(r"(^|\.)bn\.", r"\1", key)
    if key.startswith("patch_embed.proj."):
        return key.removeprefix("patch_embed.")
    return key


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Convert an official SUN checkpoint's backbone (or a vitlab state dict) to `model`'s keys.

    Unwraps `model_sd` / `state_dict` / `model`, keeps the `encoder.` keys when there are any (the official
    classifier and Meta-Baseline wrappers), strips `module.`, renames with `_convert_official_key`. The classifier head
    is not in the official encoders: it keeps the model's own (fresh) weights.

    Raises:
        ValueError: listing every missing, unexpected and mis-shaped backbone key at once.
    """
    for wrapper in ("model_sd", "state_dict", "model"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
            break
    keys = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if any(key.startswith("encoder.") for key in keys):
        keys = {key.removeprefix("encoder."): value for key, value in keys.items() if key.startswith("encoder.")}
    target = model.state_dict()
    lvvit = isinstance(model, LVViT)
    converted: dict[str, Tensor] = {}
    for key, value in keys.items():
        key = _convert_official_key(key)
        if lvvit and key.startswith("patch_embed."):
            key = "stem." + key.removeprefix("patch_embed.")
        converted[key] = value
    head = "head."
    report = state_dict_mismatch(converted, target, lambda k: k.startswith(head))
    if report is not None:
        raise CheckpointError(f"{type(model).__name__} checkpoint does not match: {report}")
    for key in target:
        if key.startswith(head) and key not in converted:
            converted[key] = target[key]
    return converted


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 64,  # the miniImageNet / CIFAR-FS base classes
        "input_size": (3, 80, 80),
        "pool_size": (5, 5),
        "crop_pct": 80 / 88,  # the few-shot test transform: resize 88, centre crop 80 (spec section 2.7)
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1",
        "classifier": "head",
        "paper_ids": "arXiv:2203.07057",
        "paper_name": "Self-Promoted Supervision for Few-Shot Transformer",
        **kwargs,
    }


_CFG_32 = dict(input_size=(3, 32, 32), pool_size=(4, 4), num_classes=10, crop_pct=1.0)
default_cfgs = generate_default_cfgs(
    {
        "visformer_micro_80": _cfg(),
        "nest_micro_resembed_80": _cfg(first_conv="patch_embed.conv1"),
        "lvvit_micro_80": _cfg(),
        "test_visformer_fs32": _cfg(**_CFG_32),
        "test_nest_fs32": _cfg(first_conv="patch_embed.conv1", **_CFG_32),
        "test_lvvit_fs32": _cfg(**_CFG_32),
        "resnet12_80": _cfg(first_conv="layers.0.conv1", paper_ids="arXiv:2003.04390",
                            paper_name="Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot Learning"),
        "test_resnet12_fs32": _cfg(first_conv="layers.0.conv1", **_CFG_32),
    }
)


def _create(cls: type[nn.Module], variant: str, pretrained: bool, **kwargs: Any) -> Any:
    if pretrained:
        raise ConfigError(
            f"{variant}: vitlab ships no weights and never downloads them; for an official SUN checkpoint build the "
            "model and call model.load_state_dict(checkpoint_filter_fn(torch.load(path, weights_only=True), model))"
        )
    feature_cfg: dict[str, Any] | None = None
    if issubclass(cls, Nest):
        feature_cfg = dict(out_indices=(0, 1, 2), flatten_sequential=True)
    elif issubclass(cls, FewShotVisformer):
        feature_cfg = dict(out_indices=(0, 1, 2), feature_cls="getter")
    return build_model_with_cfg(cls, variant, pretrained=False, feature_cfg=feature_cfg, **kwargs)


@register_vitlab_model
def visformer_micro_80(pretrained: bool = False, **kwargs: Any) -> FewShotVisformer:
    """SUN's Visformer ("visformer_small_80" in the paper): 12,531,392 backbone params, 5x5x512 map at 80 px."""
    return _create(
        FewShotVisformer,
        "visformer_micro_80",
        pretrained,
        **{"embed_dim": 256, "depths": (4, 2, 3), "num_heads": 6, "stem_dim": 64, **kwargs},
    )


@register_vitlab_model
def nest_micro_resembed_80(pretrained: bool = False, **kwargs: Any) -> FewShotNest:
    """SUN's NesT with the conv stem: 12,795,456 backbone params, 5x5x512 map at 80 px."""
    return _create(
        FewShotNest,
        "nest_micro_resembed_80",
        pretrained,
        **{
            "embed_dims": (128, 384, 512),
            "num_heads": (4, 12, 16),
            "depths": (2, 2, 2),
            "drop_path_rate": 0.0,
            **kwargs,
        },
    )


@register_vitlab_model
def lvvit_micro_80(pretrained: bool = False, **kwargs: Any) -> LVViT:
    """SUN's LV-ViT: 12,597,312 backbone params, 5x5x384 patch map at 80 px."""
    return _create(
        LVViT,
        "lvvit_micro_80",
        pretrained,
        **{"embed_dim": 384, "depth": 8, "num_heads": 6, "mlp_ratio": 3.0, "stem_dim": 96, **kwargs},
    )


@register_vitlab_model
def test_visformer_fs32(pretrained: bool = False, **kwargs: Any) -> FewShotVisformer:
    """Tiny few-shot Visformer for tests and the CPU plan (spec section 6): 32 px, 4x4x128 map."""
    return _create(
        FewShotVisformer,
        "test_visformer_fs32",
        pretrained,
        **{
            "img_size": 32,
            "embed_dim": 64,
            "depths": (1, 1, 1),
            "num_heads": 2,
            "stem_dim": 16,
            "stem_pool": False,
            **kwargs,
        },
    )


@register_vitlab_model
def test_nest_fs32(pretrained: bool = False, **kwargs: Any) -> FewShotNest:
    """Tiny NesT with the conv stem: 32 px, 4x4x128 map."""
    return _create(
        FewShotNest,
        "test_nest_fs32",
        pretrained,
        **{
            "img_size": 32,
            "embed_dims": (32, 64, 128),
            "num_heads": (1, 2, 4),
            "depths": (1, 1, 1),
            "stem_dim": 16,
            "stem_pool": False,
            "drop_path_rate": 0.0,
            **kwargs,
        },
    )


@register_vitlab_model
def test_lvvit_fs32(pretrained: bool = False, **kwargs: Any) -> LVViT:
    """Tiny LV-ViT: 32 px, patch 8, 4x4x96 patch map."""
    return _create(
        LVViT,
        "test_lvvit_fs32",
        pretrained,
        **{"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 2, "num_heads": 2, "stem_dim": 16, **kwargs},
    )


@register_vitlab_model
def resnet12_80(pretrained: bool = False, **kwargs: Any) -> ResNet12:
    """ResNet-12 of Meta-Baseline (widths 64, 160, 320, 640): 12,424,320 backbone params, 5x5x640 map at 80 px."""
    return _create(ResNet12, "resnet12_80", pretrained, **{"dims": (64, 160, 320, 640), "pooled": 4, **kwargs})


@register_vitlab_model
def test_resnet12_fs32(pretrained: bool = False, **kwargs: Any) -> ResNet12:
    """Tiny ResNet-12 for the CPU plan's CNN row: widths (16, 32, 64, 128), 3 pools, 32 px -> 4x4x128 map."""
    return _create(ResNet12, "test_resnet12_fs32", pretrained,
                   **{"img_size": 32, "dims": (16, 32, 64, 128), "pooled": 3, **kwargs})
