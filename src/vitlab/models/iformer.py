"""iFormer: "Inception Transformer" (Si et al., NeurIPS 2022, arXiv 2205.12956); vitlab spec specs/iformer.md.

A 4-stage hierarchical vision transformer whose token mixer, the Inception mixer (spec section 2.2), splits the
channels of every block into a high-frequency path (a max-pool branch and a depthwise-conv branch) and a
low-frequency path (self-attention, on 2x2 average-pooled tokens in stages 1-2), then fuses them with a residual
depthwise conv and a 1x1 projection. A frequency ramp (spec section 2.3) moves channels from the high to the low path
as depth grows; it is stored here as an explicit per-block list of attention heads, exactly as in the released models.

Faithful to the official implementation (sail-sg/iFormer, models/inception_transformer.py): parameter counts, fvcore
FLOPs, channel order [conv branch, max-pool branch, attention], LayerScale only in stages 3-4, nearest upsampling, no
projection inside attention, initialisation. Official checkpoints load through `checkpoint_filter_fn`.

Layout: tokens are channels-last, (B, H, W, C), everywhere inside the stages. The 1x1 convolutions of the official
code are `nn.Linear` layers on those tokens and the depthwise convolutions run on channels-last views, so a block does
no layout copies besides the channel concat (which also performs the nearest upsampling of the low path).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerScale, trunc_normal_, use_fused_attn
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from torch import Tensor, nn

from vitlab.models import register_vitlab_model

__all__ = [
    "InceptionTransformer",
    "InceptionMixer",
    "HighFrequencyMixer",
    "LowFrequencyMixer",
    "IFormerBlock",
    "IFormerStage",
    "checkpoint_filter_fn",
]

HEAD_DIM = 32  # every stage of every released variant uses 32-channel heads (spec section 2.2)
CPU_CHUNK_ELEMENTS = 2**21  # on CPU, blocks run on as many images at once as keep the MLP hidden tokens under this
LEAN_BACKWARD = True  # with autograd on, mixer and MLP keep only their inputs and recompute the cheap rest in backward


def _channels_first(tokens: Tensor) -> Tensor:
    """(B, H, W, C) tokens -> (B, C, H, W) view with channels-last strides (no copy)."""
    return tokens.permute(0, 3, 1, 2)


def _channels_last(feature_map: Tensor) -> Tensor:
    """(B, C, H, W) map -> (B, H, W, C) tokens; a view when the map has channels-last strides."""
    return feature_map.permute(0, 2, 3, 1)


def _token_linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """`layer` over the last dim of (B, H, W, K) tokens that may be a channel slice of wider tokens.

    The slice folds to a strided (B*H*W, K) matrix that BLAS reads in place, with the bias fused into the GEMM
    (a plain nn.Linear on a 4-D slice copies it, or runs a GEMM and then a separate bias add)."""
    return F.linear(x.reshape(-1, x.shape[-1]), layer.weight, layer.bias).view(*x.shape[:-1], -1)


def _gelu_owned(x: Tensor) -> Tensor:
    """GELU (exact, erf) of a tensor the caller owns: in place when autograd is off, saving a fresh allocation."""
    return F.gelu(x) if torch.is_grad_enabled() else torch.ops.aten.gelu_(x)


def _heads_to_tokens(x: Tensor, height: int, width: int) -> Tensor:
    """(B, heads, h*w, 32) attention output -> (B, h, w, heads*32) tokens (a copy: heads interleave into channels)."""
    batch, heads, _, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, height, width, heads * head_dim)


# --------------------------------------------------------------------------------------------------------------------
# The training path: two autograd functions that keep only their inputs for backward and recompute the cheap rest
# --------------------------------------------------------------------------------------------------------------------
#
# Plain autograd keeps, per block, every intermediate some backward formula reads: in the mixer the 1x1 and depthwise
# outputs of the high path before and after GELU, the max-pool indices (int64), the (B, H, W, F) concat and its
# fused depthwise conv; in the MLP the LayerNorm output and the 4C-wide hidden tokens before and after GELU. That is
# 2.75x DeiT-S's saved bytes at similar FLOPs (stage 1 runs at 56x56 tokens). The functions below keep only the
# block's own inputs (the LayerNorm output of the mixer, the attention kernel's output, the MLP's input and its
# 4C-wide pre-activation) and recompute the element-wise ops, pooling, depthwise convs and the small high-path 1x1
# GEMMs in backward; the big GEMMs (proj, fc1, fc2, qkv) are never recomputed. The forward arithmetic is the modules'
# own, op for op (under autocast too: the recomputation runs under the forward's autocast state), so outputs are
# identical and gradients equal up to float rounding (tests/models/test_iformer.py).


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for `device_type`, or None when autocast is off."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def _autocast_as(device_type: str, dtype: torch.dtype | None) -> torch.autocast:
    """An autocast context equal to the state `_autocast_dtype` recorded (off when `dtype` is None)."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def _rows(x: Tensor) -> Tensor:
    """(..., K) tokens -> (N, K) rows; a view for channel slices of contiguous tokens."""
    return x.reshape(-1, x.shape[-1])


def _dwconv_backward(grad: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients (input, weight) of a 3x3 depthwise conv (padding 1, no bias) of (B, H, W, K) channels-last tokens."""
    grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
        _channels_first(grad), _channels_first(x), weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0],
        weight.shape[0], [True, True, False],
    )  # fmt: skip
    return _channels_last(grad_x), grad_w


def _fuse_kernel(weight: Tensor) -> Tensor:
    """The fusion depthwise kernel with 1 added at its centre tap: y + DWConv(y) as one conv."""
    identity = torch.zeros_like(weight[:1])
    identity[..., 1, 1] = 1.0
    return weight + identity


def _upsample_concat(parts: Sequence[Tensor], low: Tensor, pool_low: bool) -> Tensor:
    """concat(parts..., low) over channels of (B, H, W, *) tokens, `low` nearest-upsampled 2x when `pool_low`."""
    if not pool_low:
        return torch.cat([*parts, low], dim=-1)
    batch, height, width, _ = parts[0].shape
    # nearest 2x upsampling folded into the concat: split H and W into (H/2, 2) and broadcast the low path over the
    # 2x2 window, so the only copy is the concat itself
    window = (batch, height // 2, 2, width // 2, 2)
    low = low[:, :, None, :, None, :].expand(*window, low.shape[-1])
    fused = torch.cat([p.reshape(*window, p.shape[-1]) for p in parts] + [low], dim=-1)
    return fused.reshape(batch, height, width, -1)


def _scaled_linear(x: Tensor, weight: Tensor, bias: Tensor, layer_scale: Tensor | None) -> Tensor:
    """Linear over the last dim of (..., K) tokens, then LayerScale (x * gamma, as timm's) when given."""
    out = F.linear(_rows(x), weight, bias).view(*x.shape[:-1], -1)
    return out if layer_scale is None else out * layer_scale


def _scaled_linear_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor, layer_scale: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients (x, weight, bias, layer_scale) of `_scaled_linear`, its matrix products in `dtype`, without
    keeping its output: d gamma_c = sum_t g_tc (x_t . W_c + b_c) = (g^T x)_c . W_c + b_c sum_t g_tc reuses the
    weight gradient's product g^T x."""
    grad_out, x = _rows(grad_out), _rows(x)
    if layer_scale is None:
        grad_out = grad_out.to(dtype)
        grad_x = (grad_out @ weight.to(dtype)).view(*x.shape[:-1], -1)
        return grad_x, grad_out.t() @ x.to(dtype), grad_out.sum(0), None
    products = (grad_out.to(dtype).t() @ x.to(dtype)).to(weight.dtype)  # g^T x, (C_out, C_in)
    grad_bias_unscaled = grad_out.sum(0).to(weight.dtype)
    grad_scale = (products * weight).sum(1) + bias * grad_bias_unscaled
    grad_x = grad_out.to(dtype) @ (layer_scale[:, None] * weight).to(dtype)
    return grad_x, layer_scale[:, None] * products, layer_scale * grad_bias_unscaled, grad_scale


class _AveragePool2x2(torch.autograd.Function):
    """2x2 average pooling (stride 2) of (B, H, W, C) tokens with even H and W, keeping nothing for backward.

    Autograd's avg_pool2d keeps its input for backward although only its shape is needed; that input is the block's
    LayerNorm output, kept in float32 under autocast (the only other copy kept is the autocast-dtype high slice)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return _channels_last(F.avg_pool2d(_channels_first(x), 2))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        batch, height, width, channels = grad.shape
        window = grad[:, :, None, :, None, :].expand(batch, height, 2, width, 2, channels)
        return window.reshape(batch, 2 * height, 2 * width, channels) * 0.25


class _InceptionFusion(torch.autograd.Function):
    """High-frequency path, upsampling, concat, fusion conv and projection of the Inception mixer (spec section 2.2).

    Inputs: `high` (B, H, W, C_h), the LayerNorm output's first C_h channels; `low_heads` (B, heads, h*w, 32), the
    attention kernel's output; the block's LayerScale gamma (or None); the parameters. Output (B, H, W, C):
    proj(y + DWConv(y)), times gamma (LayerScale folded in, so that its input need not be kept). Saved for backward:
    `high` (in the autocast dtype, as the 1x1 layers would keep it), `low_heads` (also saved by the attention kernel)
    and the parameters; the rest is recomputed.
    """

    @staticmethod
    def _recompute(
        high: Tensor,
        low_heads: Tensor,
        layer_scale: Tensor | None,
        params: Sequence[Tensor],
        pool_low: bool,
        keep_indices: bool,
    ) -> dict[str, Tensor]:
        conv_pw_w, conv_dw_w, pool_pw_w, pool_pw_b, fuse_w, proj_w, proj_b = params
        half = high.shape[-1] // 2
        conv_pw = F.linear(_rows(high[..., :half]), conv_pw_w).view(*high.shape[:-1], -1)
        conv_pre = _channels_last(F.conv2d(_channels_first(conv_pw), conv_dw_w, padding=1, groups=conv_pw.shape[-1]))
        pool_in = _channels_first(high[..., half:])
        if keep_indices:
            pooled, indices = F.max_pool2d(pool_in, 3, stride=1, padding=1, return_indices=True)
        else:
            pooled, indices = F.max_pool2d(pool_in, 3, stride=1, padding=1), None
        pooled = _channels_last(pooled)
        pool_pre = F.linear(_rows(pooled), pool_pw_w, pool_pw_b).view(*pooled.shape[:-1], -1)
        low_height = high.shape[1] // 2 if pool_low else high.shape[1]
        low = _heads_to_tokens(low_heads, low_height, low_heads.shape[2] // low_height)
        y = _upsample_concat([F.gelu(conv_pre), F.gelu(pool_pre)], low, pool_low)
        z = _channels_last(F.conv2d(_channels_first(y), _fuse_kernel(fuse_w), padding=1, groups=y.shape[-1]))
        parts = dict(conv_pw=conv_pw, conv_pre=conv_pre, pooled=pooled, pool_pre=pool_pre, y=y, z=z)
        if keep_indices and indices is not None:  # backward: all but the projection, whose output it does not need
            parts["indices"] = indices
        else:
            parts["out"] = _scaled_linear(z, proj_w, proj_b, layer_scale)
        return parts

    @staticmethod
    def forward(
        ctx: Any, high: Tensor, low_heads: Tensor, layer_scale: Tensor | None, pool_low: bool, *params: Tensor
    ) -> Tensor:
        ctx.autocast = _autocast_dtype(high.device.type)
        ctx.pool_low = pool_low
        ctx.high_dtype = high.dtype
        out = _InceptionFusion._recompute(high, low_heads, layer_scale, params, pool_low, keep_indices=False)["out"]
        # the 1x1 layers read `high` in the autocast dtype; max-pooling commutes with that (monotonic) rounding
        ctx.save_for_backward(high.to(ctx.autocast or high.dtype), low_heads, layer_scale, *params)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        high, low_heads, layer_scale, *params = ctx.saved_tensors
        conv_pw_w, conv_dw_w, pool_pw_w, _, fuse_w, proj_w, proj_b = params
        with torch.no_grad(), _autocast_as(high.device.type, ctx.autocast):
            parts = _InceptionFusion._recompute(high, low_heads, None, params, ctx.pool_low, keep_indices=True)
        dtype = parts["z"].dtype
        high_dim, low_dim = high.shape[-1], low_heads.shape[1] * low_heads.shape[3]
        half = high_dim // 2

        grad_z, grad_proj_w, grad_proj_b, grad_scale = _scaled_linear_backward(
            grad_out, parts["z"], proj_w, proj_b, layer_scale, dtype
        )
        grad_z = grad_z.view(parts["z"].shape)
        grad_y, grad_fuse_w = _dwconv_backward(grad_z, parts["y"], _fuse_kernel(fuse_w).to(dtype))

        grad_conv_pre = torch.ops.aten.gelu_backward(grad_y[..., :high_dim], parts["conv_pre"])
        grad_conv_pw, grad_conv_dw_w = _dwconv_backward(grad_conv_pre, parts["conv_pw"], conv_dw_w.to(dtype))
        grad_conv_pw = _rows(grad_conv_pw)
        grad_conv_pw_w = grad_conv_pw.t() @ _rows(high[..., :half]).to(dtype)
        grad_high_conv = grad_conv_pw @ conv_pw_w.to(dtype)

        grad_pool_pre = _rows(torch.ops.aten.gelu_backward(grad_y[..., high_dim : 2 * high_dim], parts["pool_pre"]))
        grad_pool_pw_w = grad_pool_pre.t() @ _rows(parts["pooled"]).to(dtype)
        grad_pool_pw_b = grad_pool_pre.sum(0)
        # the max-pool's gradient in the dtype of its forward input (overlapping windows add up there); under
        # autocast the recomputed argmax breaks ties among values equal in the autocast dtype (the forward cannot
        # tell them apart either: only their rounded maximum reaches the 1x1 layer)
        grad_pooled = (grad_pool_pre @ pool_pw_w.to(dtype)).view(parts["pooled"].shape).to(ctx.high_dtype)
        grad_high_pool = torch.ops.aten.max_pool2d_with_indices_backward(
            _channels_first(grad_pooled), _channels_first(high[..., half:].to(ctx.high_dtype)), [3, 3], [1, 1],
            [1, 1], [1, 1], False, parts["indices"],
        )  # fmt: skip
        grad_high = torch.cat([grad_high_conv.view(*high.shape[:-1], half), _channels_last(grad_high_pool)], dim=-1)

        grad_low = grad_y[..., 2 * high_dim :]
        batch, height, width, _ = grad_low.shape
        if ctx.pool_low:  # the nearest upsampling's gradient: the sum over each 2x2 window
            grad_low = grad_low.reshape(batch, height // 2, 2, width // 2, 2, low_dim).sum(dim=(2, 4))
        grad_low_heads = grad_low.reshape(batch, -1, low_heads.shape[1], low_heads.shape[3]).transpose(1, 2)

        grads = (grad_conv_pw_w, grad_conv_dw_w, grad_pool_pw_w, grad_pool_pw_b, grad_fuse_w, grad_proj_w, grad_proj_b)
        return (
            grad_high.to(ctx.high_dtype),
            grad_low_heads.to(low_heads.dtype),
            grad_scale,
            None,
            *(g.to(p.dtype) for g, p in zip(grads, params, strict=True)),
        )


class _LayerNormMlp(torch.autograd.Function):
    """x -> fc2(GELU(fc1(LayerNorm(x)))) [* gamma] on (B, H, W, C) tokens, saving only x and the fc1 output for
    backward (the LayerNorm output and the GELU output are recomputed; LayerScale, when given, is folded in)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, eps: float, layer_scale: Tensor | None, norm_w: Tensor, norm_b: Tensor, fc1_w: Tensor,
        fc1_b: Tensor, fc2_w: Tensor, fc2_b: Tensor,
    ) -> Tensor:  # fmt: skip
        ctx.autocast = _autocast_dtype(x.device.type)
        ctx.eps = eps
        normed = F.layer_norm(x, x.shape[-1:], norm_w, norm_b, eps)
        hidden = F.linear(_rows(normed), fc1_w, fc1_b)
        out = _scaled_linear(F.gelu(hidden), fc2_w, fc2_b, layer_scale).view(*x.shape[:-1], -1)
        ctx.norm_dtype = normed.dtype
        ctx.save_for_backward(x, hidden, layer_scale, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, hidden, layer_scale, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b = ctx.saved_tensors
        dtype = hidden.dtype
        x_norm = x.to(ctx.norm_dtype)
        normed, mean, rstd = torch.ops.aten.native_layer_norm(
            x_norm, [x.shape[-1]], norm_w.to(ctx.norm_dtype), norm_b.to(ctx.norm_dtype), ctx.eps
        )
        grad_activated, grad_fc2_w, grad_fc2_b, grad_scale = _scaled_linear_backward(
            grad_out, F.gelu(hidden), fc2_w, fc2_b, layer_scale, dtype
        )
        grad_hidden = torch.ops.aten.gelu_backward(grad_activated, hidden)
        grad_fc1_w, grad_fc1_b = grad_hidden.t() @ _rows(normed).to(dtype), grad_hidden.sum(0)
        grad_normed = (grad_hidden @ fc1_w.to(dtype)).view(x.shape).to(ctx.norm_dtype)
        grad_x, grad_norm_w, grad_norm_b = torch.ops.aten.native_layer_norm_backward(
            grad_normed, x_norm, [x.shape[-1]], mean, rstd, norm_w.to(ctx.norm_dtype), norm_b.to(ctx.norm_dtype),
            [True, True, True],
        )  # fmt: skip
        grads = (grad_norm_w, grad_norm_b, grad_fc1_w, grad_fc1_b, grad_fc2_w, grad_fc2_b)
        params = (norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b)
        return grad_x.to(x.dtype), None, grad_scale, *(g.to(p.dtype) for g, p in zip(grads, params, strict=True))


class HighFrequencyMixer(nn.Module):
    """High-frequency path of the Inception mixer (spec section 2.2): C_h channels in, two C_h-channel outputs.

    The first C_h/2 channels go through a 1x1 projection (no bias), a depthwise 3x3 conv (no bias) and GELU; the last
    C_h/2 through a 3x3 max-pool (stride 1) and a 1x1 projection with bias, then GELU. Each branch doubles its width.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"HighFrequencyMixer: the high-path width C_h must be even (split in two), got {dim}")
        self.branch_dim = dim // 2
        self.conv_pointwise = nn.Linear(self.branch_dim, dim, bias=False)  # official high_mixer.conv1
        self.conv_depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)  # official high_mixer.proj1
        self.pool_pointwise = nn.Linear(self.branch_dim, dim)  # official high_mixer.proj2

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, H, W, C_h) tokens -> (conv branch, max-pool branch), each (B, H, W, C_h)."""
        conv_in, pool_in = x[..., : self.branch_dim], x[..., self.branch_dim :]
        conv_out = _token_linear(conv_in, self.conv_pointwise)
        conv_out = _gelu_owned(_channels_last(self.conv_depthwise(_channels_first(conv_out))))
        pool_out = _channels_last(F.max_pool2d(_channels_first(pool_in), 3, stride=1, padding=1))
        pool_out = _gelu_owned(_token_linear(pool_out, self.pool_pointwise))
        return conv_out, pool_out


class LowFrequencyMixer(nn.Module):
    """Low-frequency path of the Inception mixer (spec section 2.2): multi-head self-attention over the tokens.

    In stages 1-2 (`pool=True`) the tokens are first average-pooled 2x2; the caller upsamples the (B, H/2, W/2, C_l)
    result back (nearest). There is no output projection here: `InceptionMixer.proj` is the only one.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, pool: bool = True):
        super().__init__()
        if dim != num_heads * HEAD_DIM:
            raise ValueError(f"LowFrequencyMixer: width {dim} must be num_heads ({num_heads}) x {HEAD_DIM}")
        self.num_heads = num_heads
        self.scale = HEAD_DIM**-0.5
        self.pool = pool
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C_l) tokens -> (B, H', W', C_l), with (H', W') = (H/2, W/2) when pooling, else (H, W)."""
        return self.attend(self.pool_tokens(x))

    def pool_tokens(self, x: Tensor) -> Tensor:
        """(B, H, W, C_l) -> the tokens attention runs on: 2x2 average-pooled when pooling, else `x` itself."""
        if not self.pool:
            return x
        # AvgPool2d(2, 2, count_include_pad=False); on an even map every window is full
        if torch.is_grad_enabled() and LEAN_BACKWARD:
            return _AveragePool2x2.apply(x)
        return _channels_last(F.avg_pool2d(_channels_first(x), 2))

    def attend(self, x: Tensor) -> Tensor:
        """Self-attention among the (B, h, w, C_l) tokens of each image (32-channel heads) -> (B, h, w, C_l)."""
        batch, height, width, dim = x.shape
        return _heads_to_tokens(self.attend_heads(x), height, width)

    def attend_heads(self, x: Tensor) -> Tensor:
        """Self-attention among the (B, h, w, C_l) tokens of each image -> (B, heads, h*w, 32), the attention
        kernel's own output (which autograd keeps for backward anyway)."""
        batch, height, width, dim = x.shape
        qkv = (
            _token_linear(x, self.qkv)
            .reshape(batch, height * width, 3, self.num_heads, HEAD_DIM)
            .permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv.unbind(0)  # each (B, heads, N, 32)
        if self.fused_attn:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return attn @ v


class InceptionMixer(nn.Module):
    """The Inception token mixer (spec section 2.2): high path on the first C_h channels, attention on the last C_l.

    Output: proj(y + DWConv3x3(y)) with y = concat(conv branch, max-pool branch, attention) of F = 2*C_h + C_l
    channels (the official concat order). `attention_heads` = C_l / 32; C_h = C - C_l may be 0.
    """

    def __init__(
        self,
        dim: int,
        attention_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pool_low: bool = True,
    ) -> None:
        super().__init__()
        self.low_dim = attention_heads * HEAD_DIM
        self.high_dim = dim - self.low_dim
        if not 0 < self.low_dim <= dim:
            raise ValueError(
                f"InceptionMixer: {attention_heads} attention heads of {HEAD_DIM} channels do not fit in width {dim}"
            )
        self.pool_low = pool_low
        self.high_mixer = HighFrequencyMixer(self.high_dim) if self.high_dim > 0 else None
        self.low_mixer = LowFrequencyMixer(
            self.low_dim, attention_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, pool=pool_low
        )
        self.fuse_dim = 2 * self.high_dim + self.low_dim
        self.fuse_dwconv = nn.Conv2d(self.fuse_dim, self.fuse_dim, 3, padding=1, groups=self.fuse_dim, bias=False)
        self.proj = nn.Linear(self.fuse_dim, dim)  # official Mixer.proj, a 1x1 conv
        self.proj_drop = nn.Dropout(proj_drop)

    def mix(self, x: Tensor) -> Tensor:
        """(B, H, W, C) tokens -> (B, H, W, F) concat of the three paths, before fusion."""
        batch, height, width, _ = x.shape
        low = self.low_mixer(x[..., self.high_dim :])
        if self.high_mixer is None:
            if not self.pool_low:
                return low
            return low[:, :, None, :, None, :].expand(batch, height // 2, 2, width // 2, 2, self.low_dim).reshape(
                batch, height, width, self.low_dim
            )
        return _upsample_concat(self.high_mixer(x[..., : self.high_dim]), low, self.pool_low)

    def forward(self, x: Tensor, layer_scale: Tensor | None = None) -> Tensor:
        """(B, H, W, C) tokens -> (B, H, W, C), times `layer_scale` (C,) when given (the block's LayerScale gamma);
        stages 1-2 need even H and W (checked by the stage)."""
        dropout = self.training and self.proj_drop.p > 0
        if torch.is_grad_enabled() and LEAN_BACKWARD and self.high_mixer is not None and not dropout:
            low = self.low_mixer.pool_tokens(x[..., self.high_dim :])
            high = self.high_mixer
            params = (high.conv_pointwise.weight, high.conv_depthwise.weight, high.pool_pointwise.weight,
                      high.pool_pointwise.bias, self.fuse_dwconv.weight, self.proj.weight, self.proj.bias)  # fmt: skip
            return _InceptionFusion.apply(x[..., : self.high_dim], self.low_mixer.attend_heads(low), layer_scale,
                                          self.pool_low, *params)  # fmt: skip
        y = self.mix(x)
        # y + DWConv(y) is one depthwise conv whose kernel has 1 added at its centre tap: saves a full pass over y
        y = F.conv2d(_channels_first(y), _fuse_kernel(self.fuse_dwconv.weight), padding=1, groups=self.fuse_dim)
        y = self.proj_drop(self.proj(_channels_last(y)))
        return y if layer_scale is None else y * layer_scale


class IFormerMlp(nn.Module):
    """Linear(C, hidden) -> GELU -> Linear(hidden, C) on (B, H, W, C) tokens (timm's Mlp, GELU in place when
    autograd is off)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(_gelu_owned(self.fc1(x)))))


class IFormerBlock(nn.Module):
    """Pre-norm block: x + LS1 * Mixer(LN(x)), then x + LS2 * MLP(LN(x)); LayerScale only in stages 3-4."""

    def __init__(
        self,
        dim: int,
        attention_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
        pool_low: bool = True,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.mixer = InceptionMixer(
            dim, attention_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, pool_low=pool_low
        )
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = IFormerMlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        if self.training or torch.is_grad_enabled():
            x = x + self.drop_path1(self.mixer(self.norm1(x), self._gamma(self.ls1)))
            return x + self.drop_path2(self._normed_mlp(x, self._gamma(self.ls2)))
        # inference: each branch output is a fresh tensor of this block, so scale it and add the residual in place
        x = self._scale_owned(self.ls1, self.mixer(self.norm1(x))).add_(x)
        return self._scale_owned(self.ls2, self.mlp(self.norm2(x))).add_(x)

    @staticmethod
    def _gamma(layer_scale: nn.Module) -> Tensor | None:
        return layer_scale.gamma if isinstance(layer_scale, LayerScale) else None

    def _normed_mlp(self, x: Tensor, layer_scale: Tensor | None) -> Tensor:
        """MLP(LN(x)) * layer_scale; with autograd on, through `_LayerNormMlp` (saves x and the fc1 output only)
        unless dropout is active inside the MLP or the norm is not a LayerNorm."""
        mlp, norm = self.mlp, self.norm2
        dropout = self.training and (mlp.drop1.p > 0 or mlp.drop2.p > 0)
        if not (torch.is_grad_enabled() and LEAN_BACKWARD and isinstance(norm, nn.LayerNorm)) or dropout:
            y = self.mlp(self.norm2(x))
            return y if layer_scale is None else y * layer_scale
        return _LayerNormMlp.apply(x, norm.eps, layer_scale, norm.weight, norm.bias, mlp.fc1.weight, mlp.fc1.bias,
                                   mlp.fc2.weight, mlp.fc2.bias)  # fmt: skip

    @staticmethod
    def _scale_owned(layer_scale: nn.Module, x: Tensor) -> Tensor:
        return x.mul_(layer_scale.gamma) if isinstance(layer_scale, LayerScale) else x


class Stem(nn.Module):
    """Overall stride 4: conv3x3/2 (C/2) + BN + GELU, conv3x3/2 (C) + BN (official FirstPatchEmbed)."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) image -> (B, ceil(H/4), ceil(W/4), C) tokens."""
        # channels-last convolutions hand back (B, H, W, C)-contiguous tokens without a copy
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))
        return _channels_last(x)


class Downsample(nn.Module):
    """Between stages: conv3x3 stride 2 with bias, then BatchNorm, no activation (official PatchEmbed)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C_in) tokens -> (B, ceil(H/2), ceil(W/2), C_out) tokens."""
        return _channels_last(self.norm(self.conv(_channels_first(x))))


class IFormerStage(nn.Module):
    """One stage: downsampling (identity in stage 1, after the stem), position embedding, blocks.

    The position embedding is a parameter of the model (`pos_embed1..4`, the official names) and is passed in.
    """

    def __init__(
        self,
        stage_index: int,
        in_dim: int,
        dim: int,
        attention_heads: Sequence[int],
        pool_low: bool,
        layer_scale_init: float | None,
        drop_path_rates: Sequence[float],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.stage_index = stage_index
        self.pool_low = pool_low
        self.grad_checkpointing = False
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.downsample = Downsample(in_dim, dim) if stage_index > 0 else nn.Identity()
        self.blocks = nn.Sequential(
            *[
                IFormerBlock(
                    dim,
                    heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop,
                    attn_drop=attn_drop,
                    drop_path=rate,
                    layer_scale_init=layer_scale_init,
                    pool_low=pool_low,
                    norm_layer=norm_layer,
                )
                for heads, rate in zip(attention_heads, drop_path_rates, strict=True)
            ]
        )

    def forward(self, x: Tensor, pos_embed: Tensor) -> Tensor:
        """(B, H, W, C_in) tokens and a (1, H_s, W_s, C) embedding -> (B, H', W', C) tokens."""
        x = self.downsample(x)
        _, height, width, _ = x.shape
        if self.pool_low and (height % 2 or width % 2):
            raise ValueError(
                f"iFormer stage {self.stage_index + 1}: the token map is {height}x{width} (HxW), but stages 1-2 "
                "average-pool 2x2 for attention and need an even height and width; use an input whose height and "
                "width are multiples of 16"
            )
        x = x + resize_pos_embed(pos_embed, height, width)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        images_per_chunk = max(1, CPU_CHUNK_ELEMENTS // (height * width * self.mlp_hidden_dim))
        if x.device.type == "cpu" and x.shape[0] > images_per_chunk:
            # Blocks act on each image independently (LayerNorm, per-image convs and attention, MLP). On a CPU,
            # running them on a few images at a time keeps every intermediate (the MLP's 4C-wide hidden tokens
            # above all) small enough to stay in cache and to be recycled by the allocator instead of being
            # page-faulted in afresh; the result is identical.
            return torch.cat([self.blocks(chunk) for chunk in x.split(images_per_chunk)])
        return self.blocks(x)


def resize_pos_embed(pos_embed: Tensor, height: int, width: int) -> Tensor:
    """(1, H_s, W_s, C) -> (1, height, width, C): bilinear (align_corners=False) when the grid differs, as official."""
    if pos_embed.shape[1:3] == (height, width):
        return pos_embed
    resized = F.interpolate(_channels_first(pos_embed), size=(height, width), mode="bilinear", align_corners=False)
    return _channels_last(resized)


def _take_indices(num_stages: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's feature-index convention: None = all stages, int n = the last n, a sequence = those (negatives ok)."""
    if indices is None:
        indices = num_stages
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"iFormer: asked for the last {indices} stages, but the model has {num_stages}")
        return list(range(num_stages - indices, num_stages))
    taken = [num_stages + i if i < 0 else i for i in indices]
    if not taken or any(not 0 <= i < num_stages for i in taken):
        raise ValueError(f"iFormer: stage indices {list(indices)} out of range for {num_stages} stages")
    return taken


class InceptionTransformer(nn.Module):
    """iFormer (arXiv 2205.12956), following timm's model contract.

    Args:
        attention_heads: per stage, the number of 32-channel attention heads of each block (the frequency ramp,
            spec section 2.3); C_l = 32 * heads go to the low path and C_h = C - C_l to the high path.
        num_heads: per stage, C / 32; only used to check the widths (the head dim is fixed at 32).
        img_size: the size the position embeddings are built for (grids img_size / 4, 8, 16, 32); other input sizes
            interpolate them bilinearly at run time.
        layer_scale: per stage, whether blocks have LayerScale (initialised to `layer_scale_init`).
        mixer_mode: "inception" (the paper), or "attention_only" (an ablation, not a paper model: every channel goes
            to the attention path).
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        embed_dims: Sequence[int] = (96, 192, 320, 384),
        num_heads: Sequence[int] = (3, 6, 10, 12),
        attention_heads: Sequence[Sequence[int]] = ((1,) * 3, (3,) * 3, (7,) * 4 + (9,) * 5, (11,) * 3),
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_scale: Sequence[bool] = (False, False, True, True),
        layer_scale_init: float = 1e-6,
        pool_low: Sequence[bool] = (True, True, False, False),
        mixer_mode: str = "inception",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        for name, value in (
            ("embed_dims", embed_dims),
            ("num_heads", num_heads),
            ("attention_heads", attention_heads),
            ("layer_scale", layer_scale),
            ("pool_low", pool_low),
        ):
            if len(value) != num_stages:
                raise ValueError(
                    f"InceptionTransformer: {name} has {len(value)} entries, expected one per stage ({num_stages})"
                )
        for stage, (dim, heads, ramp, depth) in enumerate(zip(embed_dims, num_heads, attention_heads, depths)):
            if dim != heads * HEAD_DIM:
                raise ValueError(
                    f"InceptionTransformer: stage {stage + 1} width {dim} != num_heads {heads} x {HEAD_DIM}"
                )
            if len(ramp) != depth:
                raise ValueError(
                    f"InceptionTransformer: attention_heads[{stage}] has {len(ramp)} entries, expected "
                    f"one per block ({depth})"
                )
        if global_pool not in ("avg", ""):
            raise ValueError(f"InceptionTransformer: global_pool must be 'avg' or '', got {global_pool!r}")
        if mixer_mode == "attention_only":
            attention_heads = [(heads,) * depth for heads, depth in zip(num_heads, depths)]
        elif mixer_mode != "inception":
            raise ValueError(
                f"InceptionTransformer: mixer_mode must be 'inception' or 'attention_only', got {mixer_mode!r}"
            )
        self.mixer_mode = mixer_mode
        self.attention_heads = tuple(tuple(int(h) for h in ramp) for ramp in attention_heads)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.embed_dims = tuple(embed_dims)
        self.grad_checkpointing = False
        img_h, img_w = (img_size, img_size) if isinstance(img_size, int) else img_size
        norm_layer = _layer_norm

        self.stem = Stem(in_chans, embed_dims[0])
        for stage, dim in enumerate(embed_dims):
            stride = 4 * 2**stage
            self.register_parameter(
                f"pos_embed{stage + 1}", nn.Parameter(torch.zeros(1, img_h // stride, img_w // stride, dim))
            )
        n_blocks = sum(depths)  # linspace with both endpoints, in Python so the model also builds on the meta device
        rates = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.stages = nn.ModuleList()
        self.feature_info: list[dict[str, Any]] = []
        for stage, depth in enumerate(depths):
            first_block = sum(depths[:stage])
            self.stages.append(
                IFormerStage(
                    stage,
                    embed_dims[max(stage - 1, 0)],
                    embed_dims[stage],
                    self.attention_heads[stage],
                    pool_low=pool_low[stage],
                    layer_scale_init=layer_scale_init if layer_scale[stage] else None,
                    drop_path_rates=rates[first_block : first_block + depth],
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    norm_layer=norm_layer,
                )
            )
            self.feature_info.append(dict(num_chs=embed_dims[stage], reduction=4 * 2**stage, module=f"stages.{stage}"))
        self.norm: nn.Module = norm_layer(embed_dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Official init: trunc-normal(0.02) for every Linear/Conv2d weight (head included) and the position
        embeddings, zero biases, unit norms; LayerScale keeps its 1e-6."""
        for name in self.pos_embed_names():
            trunc_normal_(getattr(self, name), std=0.02)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def pos_embed_names(self) -> list[str]:
        """Names of the position embeddings of the stages the model keeps: pos_embed1, pos_embed2, ..."""
        return [f"pos_embed{stage + 1}" for stage in range(len(self.stages))]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The real parameter names of the position embeddings (the official code returns 'pos_embed', which
        matches nothing, so its runs decayed them; recipes reproduce that with optim.decay_pos_embed)."""
        return set(self.pos_embed_names())

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay: stem (with pos_embed1), then stages (coarse) or blocks (fine);
        pos_embed{s+1} joins the downsampling layer of stage s, after which it is added."""
        later_pos_embeds = range(1, len(self.stages))
        blocks: list[tuple[str, tuple[int, ...] | None]]
        if coarse:
            blocks = [(r"^stages\.(\d+)", None), *[(rf"^pos_embed{s + 1}$", (s,)) for s in later_pos_embeds]]
        else:
            blocks = [
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.downsample", (0,)),
                *[(rf"^pos_embed{s + 1}$", (s, 0)) for s in later_pos_embeds],
                (r"^norm", (99999,)),
            ]
        return dict(stem=r"^stem|^pos_embed1$", blocks=blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            assert isinstance(stage, IFormerStage)
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New (re-initialised) Linear head with `num_classes` outputs (0: identity); global_pool 'avg' or ''."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"InceptionTransformer: global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def _check_input(self, x: Tensor) -> None:
        """Reject non-image inputs, and inputs whose stage 1-2 token maps would be odd, naming stage and sizes."""
        if x.ndim != 4:
            raise ValueError(
                f"iFormer takes images shaped (B, C, H, W); got a {x.ndim}-D tensor of shape {tuple(x.shape)}"
                + (" (video clips (B, C, T, H, W) need a video model such as DualFormer)" if x.ndim == 5 else "")
            )
        height, width = x.shape[-2:]
        for stage_index, stage in enumerate(self.stages):
            height, width = -(-height // (4 if stage_index == 0 else 2)), -(-width // (4 if stage_index == 0 else 2))
            if stage.pool_low and (height % 2 or width % 2):
                raise ValueError(
                    f"iFormer: a {x.shape[-2]}x{x.shape[-1]} (HxW) input gives stage {stage_index + 1} a {height}x"
                    f"{width} token map, but stages 1-2 average-pool 2x2 for attention and need even sizes; use an "
                    "input whose height and width are multiples of 16"
                )

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) image -> (B, H/32, W/32, C4) final-normed tokens (channels-last, like the blocks)."""
        self._check_input(x)
        x = self.stem(x)
        for stage_index, stage in enumerate(self.stages):
            x = stage(x, getattr(self, f"pos_embed{stage_index + 1}"))
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, H4, W4, C4) tokens -> (B, num_classes) logits, or the (B, C4) token mean with pre_logits=True."""
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, num_classes); H and W multiples of 16 (stages 1-2 pool their token maps 2x2)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs as (B, C_s, H_s, W_s) maps (timm's feature API); `norm` applies the final LayerNorm to the
        last stage's output. Returns the maps, or (final normed tokens, maps) unless `intermediates_only`."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"iFormer.forward_intermediates: output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self._check_input(x)
        take = _take_indices(len(self.stages), indices)
        last_index = len(self.stages) - 1
        stages = self.stages[: max(take) + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for stage_index, stage in enumerate(stages):
            x = stage(x, getattr(self, f"pos_embed{stage_index + 1}"))
            if stage_index in take:
                out = self.norm(x) if norm and stage_index == last_index else x
                intermediates.append(_channels_first(out).contiguous() if output_fmt == "NCHW" else out)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages (and their position embeddings), norm and head that the requested features do not use."""
        take = _take_indices(len(self.stages), indices)
        keep = max(take) + 1
        for stage_index in range(keep, len(self.stages)):
            delattr(self, f"pos_embed{stage_index + 1}")
        self.stages = self.stages[:keep]
        self.feature_info = self.feature_info[:keep]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Conversion of the official checkpoints (sail-sg/iFormer, models/inception_transformer.py)
# --------------------------------------------------------------------------------------------------------------------

# official key (after "blocks{s}.{j}.") -> vitlab key (after "stages.{s-1}.blocks.{j}.")
_OFFICIAL_BLOCK_KEYS = {
    "attn.high_mixer.conv1.weight": "mixer.high_mixer.conv_pointwise.weight",
    "attn.high_mixer.proj1.weight": "mixer.high_mixer.conv_depthwise.weight",
    "attn.high_mixer.proj2.weight": "mixer.high_mixer.pool_pointwise.weight",
    "attn.high_mixer.proj2.bias": "mixer.high_mixer.pool_pointwise.bias",
    "attn.low_mixer.qkv.weight": "mixer.low_mixer.qkv.weight",
    "attn.low_mixer.qkv.bias": "mixer.low_mixer.qkv.bias",
    "attn.conv_fuse.weight": "mixer.fuse_dwconv.weight",
    "attn.proj.weight": "mixer.proj.weight",
    "attn.proj.bias": "mixer.proj.bias",
    "layer_scale_1": "ls1.gamma",
    "layer_scale_2": "ls2.gamma",
}
_OFFICIAL_STEM_KEYS = {"proj1": "conv1", "norm1": "norm1", "proj2": "conv2", "norm2": "norm2"}
_CLASSIFIER_PREFIX = "head."


def _convert_official_key(key: str) -> str:
    """Official state-dict key -> vitlab key; keys it does not know are returned unchanged (and reported later)."""
    if match := re.fullmatch(r"patch_embed\.(proj1|norm1|proj2|norm2)\.(.+)", key):
        return f"stem.{_OFFICIAL_STEM_KEYS[match[1]]}.{match[2]}"
    if match := re.fullmatch(r"patch_embed([2-9])\.(proj|norm)\.(.+)", key):
        layer = "conv" if match[2] == "proj" else "norm"
        return f"stages.{int(match[1]) - 1}.downsample.{layer}.{match[3]}"
    if match := re.fullmatch(r"blocks([1-9])\.(\d+)\.(.+)", key):
        prefix = f"stages.{int(match[1]) - 1}.blocks.{match[2]}."
        return prefix + _OFFICIAL_BLOCK_KEYS.get(match[3], match[3])  # norm1/norm2/mlp.* keep their names
    return key


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: InceptionTransformer) -> dict[str, Tensor]:
    """Convert an official iFormer checkpoint (or a vitlab one) to `model`'s state dict.

    Renames the keys, reshapes 1x1 conv weights (O, I, 1, 1) to Linear (O, I), and interpolates position embeddings
    whose grid differs from the model's (the released 384 checkpoints store 224 grids) bilinearly, exactly as the
    forward pass would. The channel order is the official one ([conv branch, max-pool branch, attention]), so no
    permutation is needed. The classifier is left to timm's loader (which drops it when num_classes differs).

    Raises:
        ValueError: listing every missing, unexpected and mis-shaped key at once.
    """
    for wrapper in ("model", "state_dict", "model_ema"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
            break
    target = model.state_dict()
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        key = _convert_official_key(key.removeprefix("module."))
        if key in target and isinstance(value, Tensor):
            expected = target[key]
            if re.fullmatch(r"pos_embed\d+", key) and value.ndim == 4 and value.shape[-1] == expected.shape[-1]:
                value = resize_pos_embed(value.float(), expected.shape[1], expected.shape[2]).to(value.dtype)
            elif value.ndim == 4 and expected.ndim == 2 and value.shape[2:] == (1, 1):
                value = value.flatten(1)  # 1x1 conv -> Linear
        converted[key] = value

    missing = [k for k in target if k not in converted and not k.startswith(_CLASSIFIER_PREFIX)]
    unexpected = [k for k in converted if k not in target and not k.startswith(_CLASSIFIER_PREFIX)]
    misshaped = [
        f"{k}: checkpoint {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}, "
        f"model {tuple(target[k].shape)}"
        for k, v in converted.items()
        if k in target
        and not k.startswith(_CLASSIFIER_PREFIX)
        and (not isinstance(v, Tensor) or v.shape != target[k].shape)
    ]
    if missing or unexpected or misshaped:
        lines = []
        for title, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if names:
                shown = names[:25] + ([f"... and {len(names) - 25} more"] if len(names) > 25 else [])
                lines.append(f"{len(names)} {title} key(s):\n    " + "\n    ".join(shown))
        raise ValueError(
            "iFormer checkpoint does not match the model (after converting official key names):\n" + "\n".join(lines)
        )
    return converted


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1",
        "classifier": "head",
        "paper_ids": "arXiv:2205.12956",
        "paper_name": "Inception Transformer",
        "license": "apache-2.0",
        **kwargs,
    }


_CFG_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)
default_cfgs = generate_default_cfgs(
    {
        "iformer_small": _cfg(),
        "iformer_base": _cfg(),
        "iformer_large": _cfg(),
        "iformer_small_384": _cfg(**_CFG_384),
        "iformer_base_384": _cfg(**_CFG_384),
        "iformer_large_384": _cfg(**_CFG_384),
        "test_iformer": _cfg(input_size=(3, 32, 32), pool_size=(1, 1), num_classes=10, crop_pct=1.0),
    }
)

# Variants (spec section 2.3-2.4); attention_heads is the frequency ramp, one entry per block.
_SMALL = dict(
    depths=(3, 3, 9, 3),
    embed_dims=(96, 192, 320, 384),
    num_heads=(3, 6, 10, 12),
    attention_heads=((1, 1, 1), (3, 3, 3), (7, 7, 7, 7, 9, 9, 9, 9, 9), (11, 11, 11)),
)
_BASE = dict(
    depths=(4, 6, 14, 6),
    embed_dims=(96, 192, 384, 512),
    num_heads=(3, 6, 12, 16),
    attention_heads=((1,) * 4, (3,) * 6, (8,) * 7 + (10,) * 7, (15,) * 6),
)
_LARGE = dict(
    depths=(4, 6, 18, 8),
    embed_dims=(96, 192, 448, 640),
    num_heads=(3, 6, 14, 20),
    attention_heads=((1,) * 4, (3,) * 6, (10,) * 9 + (12,) * 9, (19,) * 8),
)
_TEST = dict(
    depths=(1, 1, 2, 1),
    embed_dims=(64, 96, 128, 160),
    num_heads=(2, 3, 4, 5),
    attention_heads=((1,), (1,), (2, 3), (4,)),
    img_size=32,
    num_classes=10,
)


_OFFICIAL_WEIGHTS = "https://huggingface.co/sail/dl2/resolve/main/iformer/{variant}.pth"


def _create_iformer(variant: str, pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not overlay.get("file") and not kwargs.get("pretrained_cfg"):
        source = (
            f"download the official {_OFFICIAL_WEIGHTS.format(variant=variant)}"
            if variant.startswith("iformer_")
            else "no official weights exist for this test variant; use a vitlab checkpoint"
        )
        raise ValueError(
            f"{variant}: vitlab ships no weights and never downloads them; {source} and pass "
            f"pretrained_cfg_overlay=dict(file='/path/to/{variant}.pth')"
        )
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        InceptionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


@register_vitlab_model
def iformer_small(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-S: 19,866,344 params, 4.8485 GFLOPs at 224 (ImageNet-1K top-1 83.4 reported)."""
    return _create_iformer("iformer_small", pretrained, **{**_SMALL, **kwargs})


@register_vitlab_model
def iformer_base(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-B: 47,866,216 params, 9.3784 GFLOPs at 224 (top-1 84.6 reported)."""
    return _create_iformer("iformer_base", pretrained, **{**_BASE, **kwargs})


@register_vitlab_model
def iformer_large(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-L: 86,637,096 params, 14.0469 GFLOPs at 224 (top-1 84.8 reported)."""
    return _create_iformer("iformer_large", pretrained, **{**_LARGE, **kwargs})


@register_vitlab_model
def iformer_small_384(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-S with 384-grid position embeddings: 20,899,944 params, 16.098 GFLOPs (top-1 84.6 reported)."""
    return _create_iformer("iformer_small_384", pretrained, **{**_SMALL, "img_size": 384, **kwargs})


@register_vitlab_model
def iformer_base_384(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-B with 384-grid position embeddings: 48,936,296 params, 30.552 GFLOPs (top-1 85.7 reported)."""
    return _create_iformer("iformer_base_384", pretrained, **{**_BASE, "img_size": 384, **kwargs})


@register_vitlab_model
def iformer_large_384(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-L with 384-grid position embeddings: 87,743,656 params, 45.335 GFLOPs (top-1 85.8 reported)."""
    return _create_iformer("iformer_large_384", pretrained, **{**_LARGE, "img_size": 384, **kwargs})


@register_vitlab_model
def test_iformer(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """Tiny iFormer for tests and CPU recipes (spec section 5.5): 32x32 input, 10 classes, 1,173,482 params."""
    return _create_iformer("test_iformer", pretrained, **{**_TEST, **kwargs})
