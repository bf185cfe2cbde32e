"""DualFormer: a local-global stratified transformer for video recognition.

Paper: Liang, Zhou, Zimmermann, Yan, "Local-Global Stratified Transformer for Efficient Video Recognition"
(DualFormer), arXiv 2112.04674. Faithful to the official backbone (sail-sg/dualformer @ 058c10c,
``mmaction/models/backbones/dualformer.py``) and its I3D classification head.

A 4-stage pyramid of 3-D patch tokens. Inside every stage, blocks alternate between

* **LW-MSA** (even block index): full attention inside non-overlapping local 3-D windows (paper §3.2);
* **GP-MSA** (odd block index): queries from every token attend to a few pooled "pyramid" context tokens, a
  fine level (depthwise Conv3d, kernel = stride = grid / fine size) and, in stages 1-2, a coarse level
  (depthwise Conv3d → BatchNorm3d → ReLU → depthwise Conv3d), concatenated and layer-normed (paper §3.3).

A depthwise 3×3×3 position-encoding generator (PEG) follows block 0 of every stage. Input clips are
(B, 3, T, H, W); ``forward_features`` returns (B, C4, T/2, H/32, W/32).

Reduction kernels and windows are fixed at build time from ``video_size``; every size is a constructor argument
so that small clips work (see ``test_dualformer``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_, use_fused_attn
from timm.models import generate_default_cfgs, load_pretrained
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet, feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitlab.errors import CheckpointError, ConfigError
from vitlab.models import register_vitlab_model
from vitlab.models.state_dict import state_dict_mismatch

__all__ = [
    "DualFormer",
    "DualFormerConfigError",
    "CheckpointConversionError",
    "checkpoint_filter_fn",
    "inflate_2d_checkpoint",
    "stage_grids",
]

Triple = tuple[int, int, int]
NUM_STAGES = 4
# Stage transitions halve H and W and keep T (the official ``temporal_pooling`` resolves to [2, 1, 1, 1]).
TRANSITION_KERNEL: Triple = (1, 2, 2)


class DualFormerConfigError(ConfigError):
    """A window or pyramid size that does not fit the token grid of a stage."""


class CheckpointConversionError(CheckpointError):
    """A checkpoint whose keys or shapes do not match the model; the message lists every problem."""


def _triple(value: int | Sequence[int], name: str) -> Triple:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3 or any(v <= 0 for v in value):
        raise DualFormerConfigError(f"{name} must be three positive sizes (T, H, W), got {value}")
    return value  # type: ignore[return-value]


def _per_stage(value: Any, name: str, allow_none: bool = False) -> list[Triple | None]:
    """One (T, H, W) triple for all stages, or one per stage (``None`` allowed where ``allow_none``)."""
    if (
        value is None
        or isinstance(value, int)
        or (isinstance(value, Sequence) and len(value) == 3 and all(isinstance(v, int) for v in value))
    ):
        values = [value] * NUM_STAGES
    else:
        values = list(value)
        if len(values) != NUM_STAGES:
            raise DualFormerConfigError(f"{name} needs one entry per stage ({NUM_STAGES}), got {len(values)}")
    out: list[Triple | None] = []
    for i, v in enumerate(values):
        if v is None:
            if not allow_none:
                raise DualFormerConfigError(f"{name}[{i}] (stage {i + 1}) must be a (T, H, W) size, got None")
            out.append(None)
        else:
            out.append(_triple(v, f"{name}[{i}]"))
    return out


def stage_grids(video_size: Sequence[int], patch_size: Sequence[int]) -> list[Triple]:
    """Token grids (T, H, W) of the four stages for a clip of ``video_size`` (T, H, W) (paper §3.1)."""
    video = _triple(video_size, "video_size")
    patch = _triple(patch_size, "patch_size")
    for axis, (v, p) in enumerate(zip(video, patch)):
        if v % p:
            raise DualFormerConfigError(
                f"video_size {video} is not divisible by patch_size {patch} along axis {'THW'[axis]}"
            )
    grid = tuple(v // p for v, p in zip(video, patch))
    grids = [grid]
    for stage in range(1, NUM_STAGES):
        prev = grids[-1]
        if any(g % k for g, k in zip(prev, TRANSITION_KERNEL)):
            raise DualFormerConfigError(
                f"stage {stage + 1}: grid {prev} of stage {stage} cannot be downsampled by {TRANSITION_KERNEL} "
                f"(video_size {video}); H/{patch[1]} and W/{patch[2]} must be divisible by 8"
            )
        grids.append(tuple(g // k for g, k in zip(prev, TRANSITION_KERNEL)))
    return grids  # type: ignore[return-value]


def _ratio(grid: Triple, size: Triple) -> Triple:
    return (grid[0] // size[0], grid[1] // size[1], grid[2] // size[2])


def _check_divides(stage: int, what: str, size: Triple, grid: Triple) -> None:
    if any(g % s for g, s in zip(grid, size)):
        raise DualFormerConfigError(
            f"stage {stage + 1}: {what} {size} does not divide the token grid {grid} (T, H, W); "
            f"pass sizes that divide the grid of every stage"
        )


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, fused: bool, attn_drop: nn.Dropout
) -> torch.Tensor:
    """softmax(q kᵀ · scale) v for (..., heads, Nq, d) queries and (..., heads, Nk, d) keys/values."""
    if fused:
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=attn_drop.p if attn_drop.training else 0.0, scale=scale
        )
    # Explicit path (counted by fvcore): the scale multiplies the scores, as in the official code.
    attn = (q @ k.transpose(-2, -1)) * scale
    attn = attn_drop(attn.softmax(dim=-1))
    return attn @ v


class LocalWindowAttention(nn.Module):
    """LW-MSA (paper §3.2): full attention within non-overlapping (wt, wh, ww) windows; no shift, no padding.

    (B, N, C) tokens of a (T, H, W) grid → (B, N, C). The window must divide the grid (checked at build time).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Triple,
        window_size: Triple,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise DualFormerConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.grid = grid
        self.window_size = window_size
        self.num_windows = math.prod(g // w for g, w in zip(grid, window_size))
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        (T, H, W), (wt, wh, ww) = self.grid, self.window_size
        nt, nh, nw = T // wt, H // wh, W // ww
        window_tokens = wt * wh * ww
        # (B, N, C) → (B·windows, tokens per window, C), windows in (t, h, w) raster order.
        x = x.view(B, nt, wt, nh, wh, nw, ww, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
        x = x.reshape(B * self.num_windows, window_tokens, C)
        qkv = self.qkv(x).reshape(-1, window_tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = _attend(q, k, v, self.scale, self.fused_attn, self.attn_drop)  # (B·windows, heads, L, d)
        x = x.transpose(1, 2).reshape(B, nt, nh, nw, wt, wh, ww, C)
        x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class GlobalPyramidAttention(nn.Module):
    """GP-MSA (paper §3.3): queries from all N tokens; keys/values from pooled pyramid context tokens.

    The fine level pools the grid to ``fine_pysize`` with a depthwise Conv3d (kernel = stride = grid / fine);
    the optional coarse level pools to ``coarse_pysize`` with depthwise Conv3d(``coarse_first_kernel``) →
    BatchNorm3d → ReLU → depthwise Conv3d(rest). Fine then coarse tokens share one LayerNorm before the kv
    projection. When the fine kernel is 1 everywhere (the grid already is the pyramid size) or 0 along an axis
    (the pyramid is larger than the grid), there is no pooling and no norm: full global attention, as in the
    official code. (B, N, C) → (B, N, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Triple,
        fine_pysize: Triple | None,
        coarse_pysize: Triple | None = None,
        coarse_first_kernel: Triple = (1, 7, 7),
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-5,
        stage: int = 0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise DualFormerConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.grid = grid
        self.fused_attn = use_fused_attn()
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        self.fine_pool: nn.Conv3d | None = None
        self.coarse_pool: nn.Sequential | None = None
        self.context_norm: nn.LayerNorm | None = None
        self.num_context_tokens = math.prod(grid)
        fine_kernel = None
        if fine_pysize is not None and all(f <= g for f, g in zip(fine_pysize, grid)):
            _check_divides(stage, "fine pyramid size", fine_pysize, grid)
            fine_kernel = _ratio(grid, fine_pysize)
        if fine_kernel is None or math.prod(fine_kernel) == 1:
            return  # full global attention over all N tokens
        self.fine_pool = nn.Conv3d(dim, dim, kernel_size=fine_kernel, stride=fine_kernel, groups=dim)
        self.context_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.num_context_tokens = math.prod(fine_pysize)  # type: ignore[arg-type]
        if coarse_pysize is not None:
            if any(c > g for c, g in zip(coarse_pysize, grid)):
                raise DualFormerConfigError(
                    f"stage {stage + 1}: coarse pyramid size {coarse_pysize} is larger than the token grid {grid}"
                )
            _check_divides(stage, "coarse pyramid size", coarse_pysize, grid)
            coarse_kernel = _ratio(grid, coarse_pysize)
            if any(k % f for k, f in zip(coarse_kernel, coarse_first_kernel)):
                raise DualFormerConfigError(
                    f"stage {stage + 1}: coarse first kernel {coarse_first_kernel} does not divide the coarse "
                    f"pooling kernel {coarse_kernel} (grid {grid} / coarse pyramid size {coarse_pysize})"
                )
            second_kernel = _ratio(coarse_kernel, coarse_first_kernel)
            # The coarse pooling is factorised into two depthwise convolutions (faster than one large kernel).
            self.coarse_pool = nn.Sequential(
                nn.Conv3d(dim, dim, kernel_size=coarse_first_kernel, stride=coarse_first_kernel, groups=dim),
                nn.BatchNorm3d(dim),
                nn.ReLU(inplace=True),
                nn.Conv3d(dim, dim, kernel_size=second_kernel, stride=second_kernel, groups=dim),
            )
            self.num_context_tokens += math.prod(coarse_pysize)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """Key/value source: (B, N, C) tokens → (B, M, C) pyramid context tokens (M = ``num_context_tokens``)."""
        if self.fine_pool is None:
            return x
        B, N, C = x.shape
        volume = x.transpose(1, 2).reshape(B, C, *self.grid)
        levels = [self.fine_pool(volume).flatten(2)]
        if self.coarse_pool is not None:
            levels.append(self.coarse_pool(volume).flatten(2))
        return self.context_norm(torch.cat(levels, dim=2).transpose(1, 2))  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        context = self.context(x)
        kv = self.kv(context).reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        x = _attend(q, k, v, self.scale, self.fused_attn, self.attn_drop)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class DualFormerBlock(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x))). No LayerScale."""

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        mlp_ratio: float = 4.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchEmbed3d(nn.Module):
    """Conv3d with kernel = stride = ``patch_size`` and bias, then LayerNorm over channels.

    Used for the stem (patch (2, 4, 4)) and the stage transitions ((1, 2, 2)). (B, Cin, T, H, W) → (B, C, T', H', W').
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: Triple, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class PositionEncodingGenerator(nn.Module):
    """PEG (CPVT), depthwise: x + DWConv3d₃ₓ₃ₓ₃(x) on the token grid. (B, N, C) → (B, N, C)."""

    def __init__(self, dim: int, grid: Triple) -> None:
        super().__init__()
        self.grid = grid
        self.proj = nn.Conv3d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        volume = x.transpose(1, 2).reshape(B, C, *self.grid)
        return (self.proj(volume) + volume).flatten(2).transpose(1, 2)


class DualFormerStage(nn.Module):
    """One stage: [transition] → LW, GP, LW, GP, ... with the PEG after block 0.

    (B, Cin, T, H, W) → (B, C, T, H', W'); the grid is fixed at build time.
    """

    def __init__(
        self,
        stage: int,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        grid: Triple,
        window_size: Triple,
        fine_pysize: Triple | None,
        coarse_pysize: Triple | None,
        coarse_first_kernel: Triple,
        mlp_ratio: float,
        qkv_bias: bool,
        proj_drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        norm_eps: float,
    ) -> None:
        super().__init__()
        if depth < 2 or depth % 2:
            raise DualFormerConfigError(
                f"stage {stage + 1}: depth {depth} must be a positive even number (blocks alternate LW-MSA, GP-MSA)"
            )
        self.grid = grid
        self.grad_checkpointing = False
        self.downsample = PatchEmbed3d(in_dim, dim, TRANSITION_KERNEL, norm_eps) if stage > 0 else nn.Identity()
        # A window larger than the grid is clipped to the grid along that axis.
        window: Triple = (min(window_size[0], grid[0]), min(window_size[1], grid[1]), min(window_size[2], grid[2]))
        _check_divides(stage, "local window", window, grid)
        blocks = []
        for index in range(depth):
            if index % 2 == 0:
                attn: nn.Module = LocalWindowAttention(dim, num_heads, grid, window, qkv_bias, attn_drop, proj_drop)
            else:
                attn = GlobalPyramidAttention(
                    dim,
                    num_heads,
                    grid,
                    fine_pysize,
                    coarse_pysize,
                    coarse_first_kernel,
                    qkv_bias,
                    attn_drop,
                    proj_drop,
                    norm_eps,
                    stage,
                )
            blocks.append(DualFormerBlock(dim, attn, mlp_ratio, proj_drop, drop_path[index], norm_eps))
        self.blocks = nn.ModuleList(blocks)
        self.pos_embed = PositionEncodingGenerator(dim, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        B, C = x.shape[:2]
        if tuple(x.shape[2:]) != self.grid:
            raise ValueError(
                f"DualFormer stage built for the token grid {self.grid}, got {tuple(x.shape[2:])}: the reduction "
                f"kernels are fixed by video_size at build time; rebuild the model with this clip's video_size"
            )
        x = x.flatten(2).transpose(1, 2)
        for index, block in enumerate(self.blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if index == 0:
                x = self.pos_embed(x)  # PEG once per stage, right after the first block
        return x.transpose(1, 2).reshape(B, C, *self.grid)


class DualFormer(nn.Module):
    """DualFormer video classifier (backbone + I3D head) for clips (B, in_chans, T, H, W).

    Args:
        num_classes: classes of the head (0 = no classifier; ``forward`` returns pooled features).
        in_chans: input channels.
        video_size: (T, H, W) the model is built for; fixes every grid, window and pooling kernel.
        patch_size: stem kernel = stride (T, H, W).
        embed_dims, depths, num_heads: per stage; depths must be even (LW, GP pairs).
        mlp_ratio: MLP hidden width / dim.
        window_size: LW-MSA window (T, H, W), one for all stages or one per stage; clipped to the grid.
        fine_pysize: GP-MSA fine pyramid size per stage (None = full global attention in that stage).
        coarse_pysize: GP-MSA coarse pyramid size per stage (None = no coarse level; official: stages 1-2).
        coarse_first_kernel: kernel of the first coarse depthwise conv (the second makes up the rest).
        qkv_bias: bias of the q/kv/qkv projections.
        drop_rate: head dropout before the classifier (I3D head: 0.5).
        pos_drop_rate: dropout after each patch embedding. proj_drop_rate: dropout in MLPs and projections.
        attn_drop_rate: attention dropout. drop_path_rate: stochastic depth, linear over all blocks.
        global_pool: 'avg' (AdaptiveAvgPool3d(1)) or '' (no pooling; the head is applied per token).
        norm_eps: LayerNorm epsilon (PyTorch default 1e-5, as in the official backbone).
    """

    pretrained_cfg: dict[str, Any]
    default_cfg: dict[str, Any]

    def __init__(
        self,
        num_classes: int = 400,
        in_chans: int = 3,
        video_size: Sequence[int] = (32, 224, 224),
        patch_size: Sequence[int] = (2, 4, 4),
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 10, 4),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mlp_ratio: float = 4.0,
        window_size: Any = (8, 7, 7),
        fine_pysize: Any = ((8, 7, 7), (8, 7, 7), (8, 7, 7), (16, 7, 7)),
        coarse_pysize: Any = ((4, 4, 4), (4, 4, 4), None, None),
        coarse_first_kernel: Sequence[int] = (1, 7, 7),
        qkv_bias: bool = True,
        drop_rate: float = 0.5,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        global_pool: str = "avg",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        for name, value in (("embed_dims", embed_dims), ("depths", depths), ("num_heads", num_heads)):
            if len(value) != NUM_STAGES:
                raise DualFormerConfigError(f"{name} needs {NUM_STAGES} entries, got {list(value)}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.video_size = _triple(video_size, "video_size")
        self.patch_size = _triple(patch_size, "patch_size")
        self.embed_dims = list(embed_dims)
        self.depths = list(depths)
        self.grids = stage_grids(self.video_size, self.patch_size)
        windows = _per_stage(window_size, "window_size")
        fine = _per_stage(fine_pysize, "fine_pysize", allow_none=True)
        coarse = _per_stage(coarse_pysize, "coarse_pysize", allow_none=True)
        first_kernel = _triple(coarse_first_kernel, "coarse_first_kernel")
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed3d(in_chans, self.embed_dims[0], self.patch_size, norm_eps)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        total_blocks = sum(self.depths)
        rates = [drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]  # linear decay rule
        stages = []
        self.feature_info = []
        spatial_reduction = self.patch_size[1]
        for i in range(NUM_STAGES):
            first = sum(self.depths[:i])
            stages.append(
                DualFormerStage(
                    stage=i,
                    in_dim=self.embed_dims[i - 1] if i > 0 else self.embed_dims[0],
                    dim=self.embed_dims[i],
                    depth=self.depths[i],
                    num_heads=num_heads[i],
                    grid=self.grids[i],
                    window_size=windows[i],  # type: ignore[arg-type]
                    fine_pysize=fine[i],
                    coarse_pysize=coarse[i],
                    coarse_first_kernel=first_kernel,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[first : first + self.depths[i]],
                    norm_eps=norm_eps,
                )
            )
            if i > 0:
                spatial_reduction *= TRANSITION_KERNEL[1]
            self.feature_info.append(
                dict(num_chs=self.embed_dims[i], reduction=spatial_reduction, module=f"stages.{i}")
            )
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(self.num_features, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Linear: truncated normal std 0.02, bias 0; LayerNorm 1/0; Conv3d and BatchNorm3d keep PyTorch defaults;
        the classifier (I3D head): normal std 0.01, bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.normal_(self.head.weight, std=0.01)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """PEG parameters (the official ``pos_block`` decay_mult 0); norms and biases are 1-D and excluded anyway."""
        return {name for name, _ in self.named_parameters() if ".pos_embed." in name}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.pos_embed", (0,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages.children():
            if isinstance(stage, DualFormerStage):
                stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.normal_(self.head.weight, std=0.01)
            nn.init.zeros_(self.head.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.video_size:
            raise ValueError(
                f"DualFormer expects clips (B, {self.in_chans}, {', '.join(map(str, self.video_size))}) "
                f"(B, C, T, H, W), got {tuple(x.shape)}; build the model with video_size=(T, H, W) of your clips"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) → final-normed features (B, C4, T/pt, H/(8·ph), W/(8·pw))."""
        self._check_input(x)
        x = self.pos_drop(self.patch_embed(x))
        for stage in self.stages:
            x = stage(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """I3D head: average over (T, H, W) → dropout → Linear. (B, C, T, H, W) → (B, classes)."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3, 4))
        else:
            x = x.permute(0, 2, 3, 4, 1)  # no pooling: the classifier is applied to every token
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCTHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (B, Ci, Ti, Hi, Wi) at ``indices`` (last n if int, all if None), for feature extraction."""
        if output_fmt not in ("NCTHW", "NCHW"):  # 'NCHW' is timm's name for channels-first; accepted as an alias
            raise ValueError(f"output_fmt must be 'NCTHW' (channels first), got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self._check_input(x)
        x = self.pos_drop(self.patch_embed(x))
        intermediates = []
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        last = len(self.stages) - 1
        for index, stage in enumerate(stages):
            x = stage(x)
            if index in take_indices:
                if norm and index == last:
                    intermediates.append(self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3))
                else:
                    intermediates.append(x)
        if intermediates_only:
            return intermediates
        if index == last:
            x = self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_norm or max_index < NUM_STAGES - 1:
            self.norm = nn.Identity()  # type: ignore[assignment]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    @torch.jit.ignore
    def block_types(self) -> list[list[str]]:
        """'LW' / 'GP' per block of each stage (for inspection and tests)."""
        return [
            ["LW" if isinstance(block.attn, LocalWindowAttention) else "GP" for block in stage.blocks]
            for stage in self.stages.children()
            if isinstance(stage, DualFormerStage)
        ]


# --------------------------------------------------------------------------------------------------------------
# Official checkpoints (mmaction2 Recognizer3D: ``backbone.*`` + I3D ``cls_head.fc_cls``) and 2-D inflation.

# (official key pattern, vitlab replacement), applied to keys without the ``backbone.`` prefix.
_OFFICIAL_RENAMES: list[tuple[str, str]] = [
    (r"^patch_embeds\.0\.", "patch_embed."),
    (r"^patch_embeds\.(\d+)\.", r"stages.\1.downsample."),
    (r"^pos_block\.(\d+)\.proj\.0\.", r"stages.\1.pos_embed.proj."),
    (r"^blocks\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"\.attn\.sr\.", ".attn.fine_pool."),
    (r"\.attn\.lr\.", ".attn.coarse_pool."),
    (r"\.attn\.norm\.", ".attn.context_norm."),
]
_HEAD_RENAMES = {"cls_head.fc_cls.weight": "head.weight", "cls_head.fc_cls.bias": "head.bias"}


def _unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensor dict of an mmcv/timm/plain checkpoint ('state_dict' / 'model' entries, 'module.' prefixes)."""
    for key in ("state_dict", "model"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    out = {}
    for key, value in checkpoint.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        out[key] = value
    return out


def _rename_official_key(key: str) -> str:
    """Official backbone key (``backbone.`` already stripped) → vitlab key."""
    for pattern, replacement in _OFFICIAL_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _convert_official_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official (mmaction2) keys to vitlab keys; keys already in vitlab form pass through unchanged."""
    out = {}
    for key, value in state_dict.items():
        if key in _HEAD_RENAMES:
            out[_HEAD_RENAMES[key]] = value
            continue
        if key.startswith("backbone."):
            key = key[len("backbone.") :]
        out[_rename_official_key(key)] = value
    return out


def _check_against_model(
    converted: Mapping[str, torch.Tensor], model: nn.Module, source: str, allow_missing: Iterable[str] = ()
) -> None:
    """One error listing every missing, unexpected and mis-shaped key."""
    allowed = set(allow_missing)
    report = state_dict_mismatch(converted, model.state_dict(), allowed.__contains__)
    if report is not None:
        raise CheckpointConversionError(
            f"{source} does not match {type(model).__name__} (video_size {getattr(model, 'video_size', '?')}, "
            f"num_classes {getattr(model, 'num_classes', '?')}): " + report
        )


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: DualFormer) -> dict[str, torch.Tensor]:
    """Convert an official DualFormer checkpoint (mmaction2 Recognizer3D) to vitlab keys.

    Accepts the raw mmcv checkpoint (``{'meta', 'state_dict', ...}``) or its state dict: ``backbone.*`` keys are
    renamed (``patch_embeds.0`` → ``patch_embed``, ``patch_embeds.i`` → ``stages.i.downsample``, ``blocks.i.j`` →
    ``stages.i.blocks.j``, ``pos_block.i.proj.0`` → ``stages.i.pos_embed.proj``, ``attn.sr`` / ``attn.lr`` /
    ``attn.norm`` → ``attn.fine_pool`` / ``attn.coarse_pool`` / ``attn.context_norm``) and the I3D head
    ``cls_head.fc_cls`` becomes ``head``. A model built with ``num_classes=0`` drops the head. Any missing,
    unexpected or mis-shaped key raises one :class:`CheckpointConversionError` listing them all.
    """
    converted = _convert_official_keys(_unwrap_state_dict(state_dict))
    if not isinstance(model.head, nn.Linear):
        converted = {k: v for k, v in converted.items() if not k.startswith("head.")}
    _check_against_model(converted, model, "official DualFormer checkpoint")
    return converted


def inflate_2d_checkpoint(state_dict: Mapping[str, Any], model: DualFormer) -> dict[str, torch.Tensor]:
    """Inflate a 2-D (image) DualFormer checkpoint into a full state dict of the 3-D ``model`` (paper §4.1).

    Keys may be official (``patch_embeds.*``, ``blocks.i.j.attn.sr``, optionally under ``backbone.``) or vitlab
    names. Rules (official ``inflate_weights``), for every 4-D conv kernel whose 3-D counterpart has temporal
    size kt: repeat kt times over time and divide by kt, so a time-constant clip gives the 2-D response:

    * stem kernel: kt = 2 (the patch's temporal size); stage transitions: kt = 1;
    * PEG 3×3: kt = 3; fine pooling ``sr``: kt = its temporal kernel; coarse ``lr.0``: a time axis (kt = 1);
    * coarse ``lr.3`` (the second coarse conv): an exact average, weight 1/∏kernel (1/16 in s1, 1/4 in s2), bias 0.

    The 2-D classifier (``head.*``) is dropped and the model's own (freshly initialised) head is kept. Returns a
    state dict that loads with ``strict=True``; raises :class:`CheckpointConversionError` listing every missing,
    unexpected or mis-shaped key.
    """
    source = _convert_official_keys(_unwrap_state_dict(state_dict))
    source = {k: v for k, v in source.items() if not k.startswith("head.")}
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key in target and value.ndim == 4 and target[key].ndim == 5:
            kt = target[key].shape[2]
            value = value.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt
        out[key] = value
    # The second coarse conv has no 2-D counterpart of this shape: start it as an exact average pool.
    for key, value in target.items():
        if ".attn.coarse_pool.3." in key:
            if key.endswith("weight"):
                out[key] = torch.full_like(value, 1.0 / math.prod(value.shape[2:]))
            else:
                out[key] = torch.zeros_like(value)
        elif key.startswith("head."):
            out[key] = value.clone()
    _check_against_model(out, model, "2-D DualFormer checkpoint (after inflation)")
    return out


# --------------------------------------------------------------------------------------------------------------
# Registry


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 400,
        "input_size": (3, 32, 224, 224),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2112.04674",
        "paper_name": "Local-Global Stratified Transformer for Efficient Video Recognition",
        "origin_url": "https://github.com/sail-sg/dualformer",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        # Official K400 weights are distributed by the authors outside any hub: bring the file and pass
        # pretrained_cfg_overlay=dict(file=PATH) (the converter below maps its keys).
        "dualformer_tiny.k400_in1k": _cfg(),
        "dualformer_small.k400_in1k": _cfg(),
        "dualformer_base.k400_in1k": _cfg(),
        "dualformer_base.k600_in22k": _cfg(num_classes=600),
        "test_dualformer.untrained": _cfg(num_classes=4, input_size=(3, 8, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3),
        "test_dualformer_global.untrained": _cfg(
            num_classes=4, input_size=(3, 8, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3
        ),
    }
)


def _create_dualformer(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build, attach the pretrained cfg, optionally load (converted) weights, optionally wrap for features.

    timm's ``build_model_with_cfg`` assumes (C, H, W) input sizes, so video models are assembled here with the
    same pieces.
    """
    pretrained_cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.pop("pretrained_cfg", None),
        pretrained_cfg_overlay=kwargs.pop("pretrained_cfg_overlay", None),
    ).to_dict()
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    cache_dir = kwargs.pop("cache_dir", None)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    kwargs.setdefault("num_classes", pretrained_cfg.get("num_classes", 400))
    kwargs.setdefault("in_chans", pretrained_cfg["input_size"][0])
    kwargs.setdefault("video_size", tuple(pretrained_cfg["input_size"][1:]))
    model = DualFormer(**kwargs)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    model.pretrained_cfg = model.default_cfg = {**pretrained_cfg, "input_size": (model.in_chans, *model.video_size)}
    if pretrained:
        load_pretrained(
            model,
            pretrained_cfg=model.pretrained_cfg,
            num_classes=model.num_classes,
            in_chans=model.in_chans,
            filter_fn=checkpoint_filter_fn,
            cache_dir=cache_dir,
        )
    if features_only:
        features = FeatureGetterNet(model, out_indices=out_indices, output_fmt="NCHW")  # channels first
        setattr(features, "pretrained_cfg", model.pretrained_cfg)  # noqa: B010 (nn.Module typing of attributes)
        setattr(features, "default_cfg", model.pretrained_cfg)  # noqa: B010
        return features
    return model


_TINY = dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 10, 4), num_heads=(2, 4, 8, 16), drop_path_rate=0.1)
_SMALL = dict(embed_dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)
_BASE = dict(embed_dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.3)
# Tiny variant for (B, 3, 8, 32, 32) clips: grids (4,8,8), (4,4,4), (4,2,2), (4,1,1).
_TEST = dict(
    embed_dims=(32, 64, 96, 128),
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 3, 4),
    window_size=(2, 4, 4),
    fine_pysize=((2, 2, 2), (2, 2, 2), (2, 2, 2), None),
    coarse_pysize=((1, 1, 1), (1, 1, 1), None, None),
    coarse_first_kernel=(1, 4, 4),
    drop_path_rate=0.0,
)


def _merge(base: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {**base, **kwargs}


@register_vitlab_model
def dualformer_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DualFormer-T: dims 64-512, depths [2, 2, 10, 4]; 21.77M backbone params, 60.09 GFLOPs per 32×224² view."""
    return _create_dualformer("dualformer_tiny", pretrained, **_merge(_TINY, kwargs))


@register_vitlab_model
def dualformer_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DualFormer-S: dims 96-768, depths [2, 2, 18, 2]; 48.91M backbone params, 158.69 GFLOPs per view."""
    return _create_dualformer("dualformer_small", pretrained, **_merge(_SMALL, kwargs))


@register_vitlab_model
def dualformer_base(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DualFormer-B: dims 128-1024, depths [2, 2, 18, 2]; 86.84M backbone params, 267.97 GFLOPs per view."""
    return _create_dualformer("dualformer_base", pretrained, **_merge(_BASE, kwargs))


@register_vitlab_model
def test_dualformer(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Tiny DualFormer for (B, 3, 8, 32, 32) clips (moving_digits); LW and GP blocks in every stage."""
    return _create_dualformer("test_dualformer", pretrained, **_merge(_TEST, kwargs))


@register_vitlab_model
def test_dualformer_global(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``test_dualformer`` with full global attention in every block (the efficiency baseline of the spec §6)."""
    config = _merge(_TEST, dict(window_size=(8, 32, 32), fine_pysize=None, coarse_pysize=None))
    return _create_dualformer("test_dualformer_global", pretrained, **_merge(config, kwargs))
