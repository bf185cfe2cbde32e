"""DualFormer: structure, parameter counts, attention against naive loops, timm contract, checkpoint conversion."""

from __future__ import annotations

import math
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import vitlab  # noqa: F401  (registers the models)
from vitlab.models.dualformer import (
    CheckpointConversionError,
    DualFormer,
    DualFormerConfigError,
    GlobalPyramidAttention,
    LocalWindowAttention,
    checkpoint_filter_fn,
    inflate_2d_checkpoint,
)

TEST_INPUT = (2, 3, 8, 32, 32)


def build(name: str, **kwargs) -> DualFormer:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def build_meta(name: str, **kwargs) -> DualFormer:
    """Full-size models built on the meta device: structure and counts without allocating weights."""
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def backbone_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))


# ---------------------------------------------------------------------------------------------------------------
# Parameter formulas of spec §2.5, written from the spec (not from the model).


def lw_block(c: int) -> int:
    return 12 * c * c + 13 * c


def gp_block(c: int, fine_kernel: tuple[int, ...] | None, coarse_kernels: tuple[tuple, tuple] | None) -> int:
    n = 12 * c * c + 13 * c
    if fine_kernel is None:  # no pooling (stage 4): equal to LW
        return n
    n += c * math.prod(fine_kernel) + c + 2 * c  # fine depthwise conv + shared LN
    if coarse_kernels is not None:
        k1, k2 = coarse_kernels
        n += (c * math.prod(k1) + c) + 2 * c + (c * math.prod(k2) + c)
    return n


def peg(c: int) -> int:
    return 28 * c


def patch_embed(c_in: int, kernel: tuple[int, ...], c: int) -> int:
    return c_in * math.prod(kernel) * c + c + 2 * c


TINY_DIMS = (64, 128, 256, 512)
TINY_FINE_KERNELS = [(2, 8, 8), (2, 4, 4), (2, 2, 2), None]
TINY_COARSE_KERNELS = [((1, 7, 7), (4, 2, 2)), ((1, 7, 7), (4, 1, 1)), None, None]


def formula_total(dims, depths, fine_kernels, coarse_kernels, patch=(2, 4, 4)) -> int:
    total = 0
    for i, (c, d) in enumerate(zip(dims, depths)):
        c_in, kernel = (3, patch) if i == 0 else (dims[i - 1], (1, 2, 2))
        total += patch_embed(c_in, kernel, c) + peg(c)
        total += d // 2 * (lw_block(c) + gp_block(c, fine_kernels[i], coarse_kernels[i]))
    return total + 2 * dims[-1]  # final LayerNorm


def test_formulas_reproduce_the_spec_anchors():
    anchors = {
        "lw": [49_984, 198_272, 789_760, 3_152_384],
        "gp": [62_784, 210_048, 792_576, 3_152_384],
        "peg": [1_792, 3_584, 7_168, 14_336],
        "patch": [6_336, 33_152, 131_840, 525_824],
    }
    for i, c in enumerate(TINY_DIMS):
        assert lw_block(c) == anchors["lw"][i]
        assert gp_block(c, TINY_FINE_KERNELS[i], TINY_COARSE_KERNELS[i]) == anchors["gp"][i]
        assert peg(c) == anchors["peg"][i]
        c_in, kernel = (3, (2, 4, 4)) if i == 0 else (TINY_DIMS[i - 1], (1, 2, 2))
        assert patch_embed(c_in, kernel, c) == anchors["patch"][i]
    assert formula_total(TINY_DIMS, (2, 2, 10, 4), TINY_FINE_KERNELS, TINY_COARSE_KERNELS) == 21_767_360


def test_tiny_modules_match_the_anchors():
    model = build_meta("dualformer_tiny")
    for i, stage in enumerate(model.stages):
        c = TINY_DIMS[i]
        assert count(stage.blocks[0]) == lw_block(c)
        assert count(stage.blocks[1]) == gp_block(c, TINY_FINE_KERNELS[i], TINY_COARSE_KERNELS[i])
        assert count(stage.pos_embed) == peg(c)
        embed = model.patch_embed if i == 0 else stage.downsample
        c_in, kernel = (3, (2, 4, 4)) if i == 0 else (TINY_DIMS[i - 1], (1, 2, 2))
        assert count(embed) == patch_embed(c_in, kernel, c)


@pytest.mark.parametrize(
    "name, expected_backbone, expected_head",
    [
        ("dualformer_tiny", 21_767_360, 205_200),
        ("dualformer_small", 48_908_064, 768 * 400 + 400),
        ("dualformer_base", 86_837_632, 1024 * 400 + 400),
    ],
)
def test_full_size_parameter_counts(name, expected_backbone, expected_head):
    model = build_meta(name)
    assert backbone_params(model) == expected_backbone
    assert count(model.head) == expected_head


def test_small_and_base_totals_against_formula():
    for name, dims in (("dualformer_small", (96, 192, 384, 768)), ("dualformer_base", (128, 256, 512, 1024))):
        expected = formula_total(dims, (2, 2, 18, 2), TINY_FINE_KERNELS, TINY_COARSE_KERNELS)
        assert backbone_params(build_meta(name)) == expected


def test_test_dualformer_parameter_total_against_formula():
    model = build("test_dualformer")
    fine = [(2, 4, 4), (2, 2, 2), (2, 1, 1), None]  # grid / (2, 2, 2); stage 4 is the full grid
    coarse = [((1, 4, 4), (4, 2, 2)), ((1, 4, 4), (4, 1, 1)), None, None]  # grid / (1,1,1) = k1 · k2
    assert backbone_params(model) == formula_total((32, 64, 96, 128), (2, 2, 2, 2), fine, coarse)


# ---------------------------------------------------------------------------------------------------------------
# Structure


def gp_context_counts(model: DualFormer) -> list[int]:
    return [
        b.attn.num_context_tokens for s in model.stages for b in s.blocks if isinstance(b.attn, GlobalPyramidAttention)
    ]


def test_tiny_kv_counts_windows_and_output_grid():
    model = build_meta("dualformer_tiny")
    assert gp_context_counts(model) == [456, 456, 392, 392, 392, 392, 392, 784, 784]
    windows = [s.blocks[0].attn.num_windows for s in model.stages]
    assert windows == [128, 32, 8, 2]
    assert [s.grid for s in model.stages] == [(16, 56, 56), (16, 28, 28), (16, 14, 14), (16, 7, 7)]
    assert model.stages[3].blocks[1].attn.fine_pool is None  # stage 4: full global attention, no norm
    assert model.stages[3].blocks[1].attn.context_norm is None
    assert model.stages[2].blocks[1].attn.coarse_pool is None  # coarse level only in stages 1-2


def test_block_alternation_in_every_stage():
    for name, depths in (("dualformer_tiny", (2, 2, 10, 4)), ("dualformer_base", (2, 2, 18, 2))):
        model = build_meta(name)
        assert model.block_types() == [["LW", "GP"] * (d // 2) for d in depths]


def test_peg_runs_right_after_block_zero_of_each_stage():
    model = build("test_dualformer").eval()
    order: list[str] = []
    for name, module in model.named_modules():
        if re.fullmatch(r"stages\.\d\.(blocks\.\d|pos_embed)", name):
            module.register_forward_hook(lambda m, i, o, name=name: order.append(name))
    model(torch.rand(TEST_INPUT))
    expected = []
    for s in range(4):
        expected += [f"stages.{s}.blocks.0", f"stages.{s}.pos_embed", f"stages.{s}.blocks.1"]
    assert order == expected


def test_test_dualformer_observed_kv_counts_and_windows():
    model = build("test_dualformer").eval()
    seen: dict[str, tuple] = {}
    for name, module in model.named_modules():
        if name.endswith("attn.kv") or name.endswith("attn.qkv"):
            module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(i[0].shape)))
    model(torch.rand(TEST_INPUT))
    kv_tokens = [seen[f"stages.{s}.blocks.1.attn.kv"][1] for s in range(4)]
    assert kv_tokens == [8 + 1, 8 + 1, 8, 4]  # fine (2,2,2) + coarse (1,1,1); fine only; full grid (4,1,1)
    assert kv_tokens == gp_context_counts(model)
    # LW: (B · windows, tokens per window, C) with window (2,4,4) clipped to (2,2,2) and (2,1,1).
    assert [seen[f"stages.{s}.blocks.0.attn.qkv"][:2] for s in range(4)] == [(16, 32), (4, 32), (4, 8), (4, 2)]


def test_forward_shape_finite_and_every_parameter_gets_a_gradient():
    model = build("test_dualformer")
    out = model(torch.rand(TEST_INPUT))
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    features = model.forward_features(torch.rand(TEST_INPUT))
    assert features.shape == (2, model.num_features, 4, 1, 1)


def test_init_follows_the_official_rules():
    model = build("test_dualformer", num_classes=400)
    qkv = model.stages[2].blocks[0].attn.qkv
    assert qkv.bias.abs().max() == 0 and abs(qkv.weight.std().item() - 0.02) < 0.002
    assert abs(qkv.weight.mean().item()) < 0.002
    assert abs(model.head.weight.std().item() - 0.01) < 0.001 and model.head.bias.abs().max() == 0
    norm = model.stages[0].blocks[0].norm1
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and norm.eps == 1e-5
    conv = model.stages[0].blocks[1].attn.fine_pool
    bound = 1 / math.sqrt(math.prod(conv.kernel_size))  # PyTorch default (kaiming uniform, a=√5), depthwise
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.5 * bound


def test_sixteen_frame_clip_builds_and_stage_four_falls_back_to_full_attention():
    model = build_meta("dualformer_tiny", video_size=(16, 224, 224))
    assert gp_context_counts(model) == [456, 456, 392, 392, 392, 392, 392, 392, 392]
    assert model.stages[3].grid == (8, 7, 7) and model.stages[3].blocks[1].attn.fine_pool is None


def test_pyramid_larger_than_grid_falls_back_to_full_attention_and_runs():
    model = build("test_dualformer", video_size=(2, 32, 32)).eval()  # grids have T = 1 < fine T = 2
    assert all(b.attn.fine_pool is None for s in model.stages for b in s.blocks[1::2])
    out = model(torch.rand(1, 3, 2, 32, 32))
    assert out.shape == (1, 4) and torch.isfinite(out).all()


def test_window_larger_than_grid_is_clipped():
    model = build("test_dualformer", window_size=(2, 8, 8))
    assert [s.blocks[0].attn.window_size for s in model.stages] == [(2, 8, 8), (2, 4, 4), (2, 2, 2), (2, 1, 1)]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(window_size=(2, 3, 4)), ["stage 1", "local window", "(2, 3, 4)", "(4, 8, 8)"]),
        (dict(fine_pysize=((2, 2, 2), (3, 2, 2), (2, 2, 2), None)), ["stage 2", "fine pyramid", "(3, 2, 2)"]),
        (dict(coarse_first_kernel=(1, 3, 3)), ["stage 1", "coarse first kernel", "(1, 3, 3)"]),
        (dict(depths=(2, 3, 2, 2)), ["stage 2", "depth 3"]),
    ],
)
def test_sizes_that_do_not_divide_are_errors_naming_stage_and_sizes(kwargs, words):
    with pytest.raises(DualFormerConfigError) as info:
        build("test_dualformer", **kwargs)
    for word in words:
        assert word in str(info.value)


def test_wrong_clip_size_is_a_clear_error():
    model = build("test_dualformer")
    with pytest.raises(ValueError, match="video_size"):
        model(torch.rand(1, 3, 16, 32, 32))


# ---------------------------------------------------------------------------------------------------------------
# Attention against naive loops (paper §3.2, §3.3)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One head, one query at a time: softmax(q·k * scale) weighted sum of v. q (Nq, d), k, v (Nk, d)."""
    out = torch.zeros_like(q)
    for i in range(q.shape[0]):
        scores = [float((q[i] @ k[j]).detach()) * scale for j in range(k.shape[0])]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        for j in range(k.shape[0]):
            out[i] += weights[j] / total * v[j]
    return out


def multi_head(x_q, x_kv, wq, bq, wk, bk, wv, bv, heads):
    q, k, v = x_q @ wq.T + bq, x_kv @ wk.T + bk, x_kv @ wv.T + bv
    d = q.shape[1] // heads
    return torch.cat(
        [
            naive_attention(q[:, h * d : (h + 1) * d], k[:, h * d : (h + 1) * d], v[:, h * d : (h + 1) * d], d**-0.5)
            for h in range(heads)
        ],
        dim=1,
    )


@pytest.mark.parametrize("fused", [False, True])
def test_local_window_attention_matches_a_naive_loop(fused):
    torch.manual_seed(1)
    grid, window, dim, heads = (4, 4, 6), (2, 2, 3), 8, 2
    attn = LocalWindowAttention(dim, heads, grid, window).eval()
    attn.fused_attn = fused
    x = torch.randn(1, math.prod(grid), dim)
    out = attn(x)[0]
    wq, wk, wv = attn.qkv.weight.chunk(3)
    bq, bk, bv = attn.qkv.bias.chunk(3)
    expected = torch.zeros_like(out)
    coords = [(t, h, w) for t in range(grid[0]) for h in range(grid[1]) for w in range(grid[2])]
    windows: dict[tuple, list[int]] = {}
    for n, (t, h, w) in enumerate(coords):  # token n sits in window (t // wt, h // wh, w // ww)
        windows.setdefault((t // window[0], h // window[1], w // window[2]), []).append(n)
    assert len(windows) == attn.num_windows == 2 * 2 * 2
    for members in windows.values():
        xs = x[0, members]
        expected[members] = multi_head(xs, xs, wq, bq, wk, bk, wv, bv, heads) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def naive_depthwise_pool(volume: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depthwise conv with kernel = stride by explicit sums. volume (C, T, H, W) → (C, T/kt, H/kh, W/kw)."""
    c, (kt, kh, kw) = volume.shape[0], weight.shape[2:]
    out = torch.zeros(c, volume.shape[1] // kt, volume.shape[2] // kh, volume.shape[3] // kw)
    for ch in range(c):
        for a in range(out.shape[1]):
            for b in range(out.shape[2]):
                for e in range(out.shape[3]):
                    patch = volume[ch, a * kt : (a + 1) * kt, b * kh : (b + 1) * kh, e * kw : (e + 1) * kw]
                    out[ch, a, b, e] = (patch * weight[ch, 0]).sum() + bias[ch]
    return out


@pytest.mark.parametrize("fused", [False, True])
def test_global_pyramid_attention_matches_a_naive_loop(fused):
    torch.manual_seed(2)
    grid, dim, heads = (4, 4, 4), 4, 2
    attn = GlobalPyramidAttention(dim, heads, grid, (2, 2, 2), (1, 1, 1), (1, 2, 2)).eval()
    attn.fused_attn = fused
    bn = attn.coarse_pool[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(1, math.prod(grid), dim)
    out = attn(x)[0]

    volume = x[0].T.reshape(dim, *grid)  # tokens are in (t, h, w) raster order
    fine = naive_depthwise_pool(volume, attn.fine_pool.weight, attn.fine_pool.bias).reshape(dim, -1).T  # (8, C)
    first = naive_depthwise_pool(volume, attn.coarse_pool[0].weight, attn.coarse_pool[0].bias)
    normed = (first - bn.running_mean[:, None, None, None]) / torch.sqrt(bn.running_var[:, None, None, None] + bn.eps)
    activated = torch.relu(normed * bn.weight[:, None, None, None] + bn.bias[:, None, None, None])
    coarse = naive_depthwise_pool(activated, attn.coarse_pool[3].weight, attn.coarse_pool[3].bias).reshape(dim, -1).T
    context = torch.cat([fine, coarse])  # fine then coarse: 8 + 1 tokens
    assert context.shape[0] == attn.num_context_tokens == 9
    context = F.layer_norm(context, (dim,), attn.context_norm.weight, attn.context_norm.bias, 1e-5)
    wk, wv = attn.kv.weight.chunk(2)
    bk, bv = attn.kv.bias.chunk(2)
    expected = multi_head(x[0], context, attn.q.weight, attn.q.bias, wk, bk, wv, bv, heads)
    expected = expected @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_fused_switch_follows_timm_and_both_paths_agree():
    fused = build("test_dualformer").eval()
    timm.layers.set_fused_attn(False)
    try:
        explicit = build("test_dualformer").eval()
    finally:
        timm.layers.set_fused_attn(True)
    attns = [b.attn for s in explicit.stages for b in s.blocks]
    assert all(a.fused_attn is False for a in attns)
    explicit.load_state_dict(fused.state_dict())
    x = torch.rand(TEST_INPUT)
    torch.testing.assert_close(explicit(x), fused(x), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# timm contract


def test_default_cfg_and_registry():
    assert {"dualformer_tiny", "dualformer_small", "dualformer_base", "test_dualformer"} <= set(
        vitlab.models.list_vitlab_models("*dualformer*")
    )
    model = build("test_dualformer")
    assert model.default_cfg["input_size"] == (3, 8, 32, 32)
    assert build_meta("dualformer_tiny").default_cfg["input_size"] == (3, 32, 224, 224)


def test_reset_classifier_forward_head_and_pre_logits():
    model = build("test_dualformer").eval()
    x = torch.rand(TEST_INPUT)
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pooled)
    model.reset_classifier(5, "")
    assert model(x).shape == (2, 4, 1, 1, 5)  # unpooled: the classifier on every token


def test_no_weight_decay_group_matcher_and_feature_info():
    model = build("test_dualformer")
    assert model.no_weight_decay() == {f"stages.{i}.pos_embed.proj.{p}" for i in range(4) for p in ("weight", "bias")}
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 1 + 4 + 1  # stem, 4 stages, final norm / head
    assert [f["num_chs"] for f in model.feature_info] == [32, 64, 96, 128]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]


def test_features_only_and_forward_intermediates():
    features = build("test_dualformer", features_only=True)
    maps = features(torch.rand(TEST_INPUT))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 8, 8), (2, 64, 4, 4, 4), (2, 96, 4, 2, 2), (2, 128, 4, 1, 1)]
    model = build("test_dualformer").eval()
    x = torch.rand(TEST_INPUT)
    final, inter = model.forward_intermediates(x, indices=2)
    assert len(inter) == 2 and inter[-1].shape == (2, 128, 4, 1, 1)
    torch.testing.assert_close(final, model.forward_features(x))


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    model = build("test_dualformer").eval()
    x = torch.rand(TEST_INPUT)
    model(x).sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    out = model(x)
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    out_ckpt.sum().backward()
    torch.testing.assert_close(out_ckpt, out)
    for p, g in zip(model.parameters(), reference):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_test_dualformer_forward_is_fast():
    import time

    model = build("test_dualformer").eval()
    x = torch.rand(1, 3, 8, 32, 32)
    timings = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(3):
            start = time.perf_counter()
            model(x)
            timings.append(time.perf_counter() - start)
    assert min(timings) < 1.0  # the fastest of three: robust to a busy shared machine


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoint conversion (mmaction2 Recognizer3D names, written from the official layout)


def official_state_dict(dims, depths, grids, fine_sizes, coarse_first, num_classes, patch=(2, 4, 4), meta=False):
    """A synthetic state dict with the official key names and shapes (``backbone.*`` and ``cls_head.fc_cls``)."""
    gen = torch.Generator().manual_seed(3)

    def t(*shape):
        return torch.empty(shape, device="meta") if meta else torch.randn(shape, generator=gen)

    sd: dict[str, torch.Tensor] = {}
    for i, c in enumerate(dims):
        c_in, kernel = (3, patch) if i == 0 else (dims[i - 1], (1, 2, 2))
        sd[f"backbone.patch_embeds.{i}.proj.weight"] = t(c, c_in, *kernel)
        sd[f"backbone.patch_embeds.{i}.proj.bias"] = t(c)
        sd[f"backbone.patch_embeds.{i}.norm.weight"] = t(c)
        sd[f"backbone.patch_embeds.{i}.norm.bias"] = t(c)
        sd[f"backbone.pos_block.{i}.proj.0.weight"] = t(c, 1, 3, 3, 3)
        sd[f"backbone.pos_block.{i}.proj.0.bias"] = t(c)
        fine_kernel = [g // f for g, f in zip(grids[i], fine_sizes[i])]
        for j in range(depths[i]):
            p = f"backbone.blocks.{i}.{j}."
            for norm in ("norm1", "norm2"):
                sd[p + norm + ".weight"], sd[p + norm + ".bias"] = t(c), t(c)
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = t(4 * c, c), t(4 * c)
            sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = t(c, 4 * c), t(c)
            sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = t(c, c), t(c)
            if j % 2 == 0:
                sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = t(3 * c, c), t(3 * c)
                continue
            sd[p + "attn.q.weight"], sd[p + "attn.q.bias"] = t(c, c), t(c)
            sd[p + "attn.kv.weight"], sd[p + "attn.kv.bias"] = t(2 * c, c), t(2 * c)
            if math.prod(fine_kernel) > 1:
                sd[p + "attn.sr.weight"], sd[p + "attn.sr.bias"] = t(c, 1, *fine_kernel), t(c)
                sd[p + "attn.norm.weight"], sd[p + "attn.norm.bias"] = t(c), t(c)
                if i < 2:
                    coarse_kernel = [g // s for g, s in zip(grids[i], coarse_first[1])]
                    second = [k // f for k, f in zip(coarse_kernel, coarse_first[0])]
                    sd[p + "attn.lr.0.weight"], sd[p + "attn.lr.0.bias"] = t(c, 1, *coarse_first[0]), t(c)
                    sd[p + "attn.lr.1.weight"], sd[p + "attn.lr.1.bias"] = t(c), t(c)
                    sd[p + "attn.lr.1.running_mean"], sd[p + "attn.lr.1.running_var"] = t(c), t(c).abs()
                    sd[p + "attn.lr.1.num_batches_tracked"] = torch.tensor(7)
                    sd[p + "attn.lr.3.weight"], sd[p + "attn.lr.3.bias"] = t(c, 1, *second), t(c)
    sd["backbone.norm.weight"], sd["backbone.norm.bias"] = t(dims[-1]), t(dims[-1])
    sd["cls_head.fc_cls.weight"], sd["cls_head.fc_cls.bias"] = t(num_classes, dims[-1]), t(num_classes)
    return sd


TEST_GRIDS = [(4, 8, 8), (4, 4, 4), (4, 2, 2), (4, 1, 1)]
TEST_FINE = [(2, 2, 2), (2, 2, 2), (2, 2, 2), (4, 1, 1)]
TEST_COARSE = ((1, 4, 4), (1, 1, 1))  # (first kernel, coarse pyramid size)


def test_official_test_size_checkpoint_converts_and_loads_into_the_right_modules():
    sd = official_state_dict((32, 64, 96, 128), (2, 2, 2, 2), TEST_GRIDS, TEST_FINE, TEST_COARSE, 4)
    model = build("test_dualformer")
    converted = checkpoint_filter_fn({"meta": {"epoch": 30}, "state_dict": sd}, model)
    model.load_state_dict(converted, strict=True)
    assert torch.equal(model.stages[0].blocks[1].attn.fine_pool.weight, sd["backbone.blocks.0.1.attn.sr.weight"])
    assert torch.equal(model.stages[1].blocks[1].attn.coarse_pool[3].weight, sd["backbone.blocks.1.1.attn.lr.3.weight"])
    assert torch.equal(model.stages[2].downsample.proj.weight, sd["backbone.patch_embeds.2.proj.weight"])
    assert torch.equal(model.stages[3].pos_embed.proj.bias, sd["backbone.pos_block.3.proj.0.bias"])
    assert torch.equal(model.patch_embed.norm.weight, sd["backbone.patch_embeds.0.norm.weight"])
    assert torch.equal(model.head.weight, sd["cls_head.fc_cls.weight"])
    assert torch.equal(model.norm.bias, sd["backbone.norm.bias"])


def test_official_tiny_checkpoint_key_names_and_shapes_convert():
    grids = [(16, 56, 56), (16, 28, 28), (16, 14, 14), (16, 7, 7)]
    fine = [(8, 7, 7), (8, 7, 7), (8, 7, 7), (16, 7, 7)]
    sd = official_state_dict(TINY_DIMS, (2, 2, 10, 4), grids, fine, ((1, 7, 7), (4, 4, 4)), 400, meta=True)
    model = build_meta("dualformer_tiny")
    converted = checkpoint_filter_fn(sd, model)
    assert set(converted) == set(model.state_dict())
    assert sum(v.numel() for k, v in converted.items() if not k.startswith("head.") and v.is_floating_point()) > 0


def test_pretrained_loading_through_timm_with_a_state_dict_overlay(tmp_path):
    sd = official_state_dict((32, 64, 96, 128), (2, 2, 2, 2), TEST_GRIDS, TEST_FINE, TEST_COARSE, 4)
    path = tmp_path / "dualformer_test.pth"
    torch.save({"state_dict": sd}, path)
    model = timm.create_model("test_dualformer", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.stages[1].blocks[0].attn.qkv.weight, sd["backbone.blocks.1.0.attn.qkv.weight"])


def test_conversion_errors_list_every_missing_unexpected_and_misshaped_key():
    sd = official_state_dict((32, 64, 96, 128), (2, 2, 2, 2), TEST_GRIDS, TEST_FINE, TEST_COARSE, 4)
    del sd["backbone.blocks.0.1.attn.sr.weight"]
    sd["backbone.blocks.0.1.attn.extra.weight"] = torch.zeros(3)
    sd["backbone.blocks.2.0.attn.qkv.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointConversionError) as info:
        checkpoint_filter_fn(sd, build("test_dualformer"))
    message = str(info.value)
    assert "stages.0.blocks.1.attn.fine_pool.weight" in message  # missing
    assert "stages.0.blocks.1.attn.extra.weight" in message  # unexpected
    assert "stages.2.blocks.0.attn.qkv.weight: checkpoint (5, 5) vs model (288, 96)" in message


# ---------------------------------------------------------------------------------------------------------------
# 2-D inflation (spec §2.4)


def two_d_state_dict(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """An image (2-D) DualFormer checkpoint with official names: 4-D conv kernels, ImageNet head, no lr.3."""
    sd = official_state_dict((32, 64, 96, 128), (2, 2, 2, 2), TEST_GRIDS, TEST_FINE, TEST_COARSE, 4)
    out = {}
    for key, value in sd.items():
        key = key[len("backbone.") :] if key.startswith("backbone.") else key
        if ".attn.lr.3." in key or key.startswith("cls_head."):
            continue
        if value.ndim == 5:
            value = torch.randn(value.shape[0], value.shape[1], *value.shape[3:], generator=generator)
        out[key] = value
    out["head.weight"], out["head.bias"] = torch.randn(1000, 128), torch.randn(1000)
    return out


def test_inflated_stem_on_a_time_constant_clip_equals_the_2d_stem():
    model = build("test_dualformer").eval()
    sd2d = two_d_state_dict(torch.Generator().manual_seed(4))
    model.load_state_dict(inflate_2d_checkpoint(sd2d, model), strict=True)
    frame = torch.rand(1, 3, 32, 32)
    clip = frame.unsqueeze(2).expand(-1, -1, 8, -1, -1)
    out3d = model.patch_embed(clip)  # (1, C, 4, 8, 8)
    conv2d = F.conv2d(frame, sd2d["patch_embeds.0.proj.weight"], sd2d["patch_embeds.0.proj.bias"], stride=4)
    out2d = F.layer_norm(
        conv2d.permute(0, 2, 3, 1), (32,), sd2d["patch_embeds.0.norm.weight"], sd2d["patch_embeds.0.norm.bias"]
    ).permute(0, 3, 1, 2)
    for t in range(4):
        torch.testing.assert_close(out3d[:, :, t], out2d, atol=1e-5, rtol=1e-5)


def test_inflation_rules_for_peg_pooling_and_coarse_average():
    model = build("test_dualformer").eval()
    sd2d = two_d_state_dict(torch.Generator().manual_seed(5))
    inflated = inflate_2d_checkpoint(sd2d, model)
    peg = inflated["stages.1.pos_embed.proj.weight"]
    assert peg.shape == (64, 1, 3, 3, 3)
    torch.testing.assert_close(peg.sum(dim=2), sd2d["pos_block.1.proj.0.weight"])  # repeated ×3, divided by 3
    assert torch.equal(peg[:, :, 0], peg[:, :, 2])
    fine = inflated["stages.0.blocks.1.attn.fine_pool.weight"]  # temporal kernel 2: repeated, halved
    torch.testing.assert_close(fine, sd2d["blocks.0.1.attn.sr.weight"].unsqueeze(2).repeat(1, 1, 2, 1, 1) / 2)
    lr0 = inflated["stages.0.blocks.1.attn.coarse_pool.0.weight"]
    assert torch.equal(lr0, sd2d["blocks.0.1.attn.lr.0.weight"].unsqueeze(2))  # a time axis of 1
    lr3 = inflated["stages.0.blocks.1.attn.coarse_pool.3.weight"]
    assert lr3.shape == (32, 1, 4, 2, 2) and torch.all(lr3 == 1 / 16)  # exact average: 1/16 in stage 1
    assert torch.all(inflated["stages.1.blocks.1.attn.coarse_pool.3.weight"] == 1 / 4)  # kernel (4,1,1): 1/4
    assert torch.all(inflated["stages.0.blocks.1.attn.coarse_pool.3.bias"] == 0)
    assert torch.equal(inflated["head.weight"], model.state_dict()["head.weight"])  # the 2-D head is dropped
    # A time-constant clip through the inflated PEG equals the 2-D PEG on interior frames.
    volume = torch.rand(1, 64, 1, 4, 4).expand(-1, -1, 4, -1, -1)
    out3d = F.conv3d(volume, peg, inflated["stages.1.pos_embed.proj.bias"], padding=1, groups=64)
    out2d = F.conv2d(
        volume[:, :, 0], sd2d["pos_block.1.proj.0.weight"], sd2d["pos_block.1.proj.0.bias"], padding=1, groups=64
    )
    torch.testing.assert_close(out3d[:, :, 1], out2d, atol=1e-5, rtol=1e-5)


def test_inflation_errors_list_the_problems():
    model = build("test_dualformer")
    sd2d = two_d_state_dict(torch.Generator().manual_seed(6))
    del sd2d["blocks.3.1.attn.q.weight"]
    sd2d["patch_embeds.0.proj.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(CheckpointConversionError) as info:
        inflate_2d_checkpoint(sd2d, model)
    assert "stages.3.blocks.1.attn.q.weight" in str(info.value)
    assert "patch_embed.proj.weight: checkpoint (32, 3, 2, 5, 5) vs model (32, 3, 2, 4, 4)" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Full size (slow): fvcore FLOPs per 32×224² view, backbone only; forwards.


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, gflops", [("dualformer_tiny", 60.088), ("dualformer_small", 158.687), ("dualformer_base", 267.965)]
)
def test_full_size_fvcore_flops(name, gflops):
    from vitlab.models.profile import count_flops

    model = build(name)
    assert round(count_flops(model, (3, 32, 224, 224), backbone_only=True) / 1e9, 3) == gflops


@pytest.mark.slow
@pytest.mark.parametrize("frames", [32, 16])
def test_full_size_tiny_forward(frames):
    model = build("dualformer_tiny", video_size=(frames, 224, 224)).eval()
    with torch.no_grad():
        features = model.forward_features(torch.rand(1, 3, frames, 224, 224))
    assert features.shape == (1, 512, frames // 2, 7, 7) and torch.isfinite(features).all()
