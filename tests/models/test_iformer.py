"""iFormer (spec iformer.md): exact counts, frequency ramp, a spec-written reference forward on official key names,
checkpoint conversion, pooling/upsampling, position-embedding interpolation, input checks, attention paths, FLOPs."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vitlab  # noqa: F401  (registers the models)
from vitlab.models import iformer as iformer_module
from vitlab.models.iformer import InceptionTransformer, LowFrequencyMixer, checkpoint_filter_fn

FULL_SIZE = ["iformer_small", "iformer_base", "iformer_large", "iformer_small_384", "iformer_base_384",
             "iformer_large_384"]  # fmt: skip

# spec section 2.4 / 2.3: depths, widths and the per-block attention heads (frequency ramp) of each variant
VARIANTS = {
    "small": ((3, 3, 9, 3), (96, 192, 320, 384), [[1] * 3, [3] * 3, [7] * 4 + [9] * 5, [11] * 3]),
    "base": ((4, 6, 14, 6), (96, 192, 384, 512), [[1] * 4, [3] * 6, [8] * 7 + [10] * 7, [15] * 6]),
    "large": ((4, 6, 18, 8), (96, 192, 448, 640), [[1] * 4, [3] * 6, [10] * 9 + [12] * 9, [19] * 8]),
}
TEST_VARIANT = ((1, 1, 2, 1), (64, 96, 128, 160), [[1], [1], [2, 3], [4]])  # spec section 5.5


def build_meta(name: str, **kwargs) -> InceptionTransformer:
    """Full-size models on the meta device: structure and counts without allocating or initialising weights."""
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def build_test(**kwargs) -> InceptionTransformer:
    torch.manual_seed(0)
    return timm.create_model("test_iformer", **kwargs)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# Parameter formulas of spec section 2.2, written from the spec


def mixer_params(dim: int, low_dim: int) -> int:
    high = dim - low_dim
    fused = 2 * high + low_dim
    conv_branch = high * high // 2 + 9 * high
    pool_branch = high * high // 2 + high
    qkv = 3 * low_dim * low_dim + 3 * low_dim
    return conv_branch + pool_branch + qkv + 9 * fused + (fused * dim + dim)


def block_params(dim: int, low_dim: int, layer_scale: bool) -> int:
    return 4 * dim + mixer_params(dim, low_dim) + (8 * dim * dim + 5 * dim) + (2 * dim if layer_scale else 0)


def model_params(depths, dims, ramp, img_size: int, num_classes: int) -> int:
    c1 = dims[0]
    total = 27 * (c1 // 2) + c1 // 2 + c1 + 9 * (c1 // 2) * c1 + c1 + 2 * c1  # stem: 2 convs with bias, 2 BNs
    for stage, (depth, dim) in enumerate(zip(depths, dims)):
        assert len(ramp[stage]) == depth
        if stage > 0:
            total += 9 * dims[stage - 1] * dim + dim + 2 * dim  # downsampling conv + BN
        total += (img_size // (4 * 2**stage)) ** 2 * dim  # position embedding
        total += sum(block_params(dim, 32 * heads, stage >= 2) for heads in ramp[stage])
    return total + 2 * dims[-1] + dims[-1] * num_classes + num_classes  # final norm + head


@pytest.mark.parametrize(
    "variant,img_size,expected",
    [("small", 224, 19_866_344), ("base", 224, 47_866_216), ("large", 224, 86_637_096),
     ("small", 384, 20_899_944), ("base", 384, 48_936_296), ("large", 384, 87_743_656)],
)  # fmt: skip
def test_spec_formulas_reproduce_totals(variant: str, img_size: int, expected: int) -> None:
    depths, dims, ramp = VARIANTS[variant]
    assert model_params(depths, dims, ramp, img_size, 1000) == expected


@pytest.mark.parametrize(
    "name,expected",
    [("iformer_small", 19_866_344), ("iformer_base", 47_866_216), ("iformer_large", 86_637_096),
     ("iformer_small_384", 20_899_944), ("iformer_base_384", 48_936_296), ("iformer_large_384", 87_743_656)],
)  # fmt: skip
def test_full_size_parameter_counts(name: str, expected: int) -> None:
    assert count(build_meta(name)) == expected


def test_test_iformer_parameter_count() -> None:
    model = build_test()
    assert count(model) == 1_173_482
    assert count(model) == model_params(*TEST_VARIANT, img_size=32, num_classes=10)


def test_small_per_part_anchors() -> None:
    """Spec section 5.1: measured per-part counts of iFormer-S."""
    model = build_meta("iformer_small")
    assert count(model.stem) == 43_200
    assert [count(stage.downsample) for stage in model.stages[1:]] == [166_464, 553_920, 1_107_072]
    assert [count(stage.blocks) for stage in model.stages] == [298_176, 1_178_496, 10_434_560, 5_165_568]
    assert count(model.norm) + count(model.head) == 385_768
    assert sum(getattr(model, name).numel() for name in model.pos_embed_names()) == 533_120
    assert count(model.stages[0].blocks[0].mixer) == 24_800 == mixer_params(96, 32)
    blocks = [model.stages[0].blocks[0], model.stages[1].blocks[0], model.stages[2].blocks[0],
              model.stages[2].blocks[4], model.stages[3].blocks[0]]  # fmt: skip
    assert [count(b) for b in blocks] == [99_392, 392_832, 1_121_280, 1_189_888, 1_721_856]


# spec section 2.3: (C_h, C_l) per block, written out from the table
RAMP_TABLE = {
    "iformer_small": [[(64, 32)] * 3, [(96, 96)] * 3, [(96, 224)] * 4 + [(32, 288)] * 5, [(32, 352)] * 3],
    "iformer_base": [[(64, 32)] * 4, [(96, 96)] * 6, [(128, 256)] * 7 + [(64, 320)] * 7, [(32, 480)] * 6],
    "iformer_large": [[(64, 32)] * 4, [(96, 96)] * 6, [(128, 320)] * 9 + [(64, 384)] * 9, [(32, 608)] * 8],
}


@pytest.mark.parametrize("name", sorted(RAMP_TABLE))
def test_frequency_ramp_per_block(name: str) -> None:
    model = build_meta(name)
    split = [[(b.mixer.high_dim, b.mixer.low_dim) for b in stage.blocks] for stage in model.stages]
    assert split == RAMP_TABLE[name]
    # LayerScale only in stages 3-4 (pitfall 1); pooled attention only in stages 1-2
    assert [isinstance(stage.blocks[0].ls1, nn.Identity) for stage in model.stages] == [True, True, False, False]
    assert [stage.blocks[0].mixer.pool_low for stage in model.stages] == [True, True, False, False]


def test_tiny_variant_split() -> None:
    model = build_test()
    assert [b.mixer.high_dim for s in model.stages for b in s.blocks] == [32, 64, 64, 32, 32]


# ---------------------------------------------------------------------------------------------------------------------
# A reference forward written from the spec, reading an official-format state dict (official key names, 1x1 convs
# as 4-D weights, channels-first maps throughout, an explicit loop over attention heads)


def _batch_norm(sd: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                        sd[f"{prefix}.bias"], False, 0.0, 1e-5)  # fmt: skip


def _layer_norm_map(sd: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    tokens = x.permute(0, 2, 3, 1)
    out = F.layer_norm(tokens, tokens.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], 1e-6)
    return out.permute(0, 3, 1, 2)


def reference_mixer(sd: dict[str, Tensor], prefix: str, x: Tensor, heads: int, pool: bool) -> Tensor:
    """Inception mixer of spec section 2.2 on a (B, C, H, W) map."""
    dim = x.shape[1]
    low = 32 * heads
    high = dim - low
    half = high // 2
    conv = F.conv2d(x[:, :half], sd[f"{prefix}.high_mixer.conv1.weight"])
    conv = F.gelu(F.conv2d(conv, sd[f"{prefix}.high_mixer.proj1.weight"], padding=1, groups=high))
    maxed = F.max_pool2d(x[:, half:high], 3, stride=1, padding=1)
    maxed = F.gelu(F.conv2d(maxed, sd[f"{prefix}.high_mixer.proj2.weight"], sd[f"{prefix}.high_mixer.proj2.bias"]))
    attn_in = x[:, high:]
    if pool:
        attn_in = F.avg_pool2d(attn_in, 2, stride=2, count_include_pad=False)
    batch, _, h, w = attn_in.shape
    tokens = attn_in.flatten(2).transpose(1, 2)
    qkv = F.linear(tokens, sd[f"{prefix}.low_mixer.qkv.weight"], sd[f"{prefix}.low_mixer.qkv.bias"])
    attended = torch.empty_like(tokens)
    for head in range(heads):  # naive loop over heads; q, k, v are the three consecutive C_l blocks of qkv
        cols = slice(32 * head, 32 * (head + 1))
        q, k, v = qkv[..., cols], qkv[..., low:][..., cols], qkv[..., 2 * low :][..., cols]
        weights = torch.softmax(q @ k.transpose(1, 2) * 32**-0.5, dim=-1)
        attended[..., cols] = weights @ v
    attended = attended.transpose(1, 2).reshape(batch, low, h, w)
    if pool:
        attended = F.interpolate(attended, scale_factor=2, mode="nearest")
    fused = torch.cat([conv, maxed, attended], dim=1)
    fused = fused + F.conv2d(fused, sd[f"{prefix}.conv_fuse.weight"], padding=1, groups=fused.shape[1])
    return F.conv2d(fused, sd[f"{prefix}.proj.weight"], sd[f"{prefix}.proj.bias"])


def reference_forward(sd: dict[str, Tensor], x: Tensor, depths, ramp) -> Tensor:
    """Whole network of spec section 2.1 -> logits."""
    x = F.conv2d(x, sd["patch_embed.proj1.weight"], sd["patch_embed.proj1.bias"], stride=2, padding=1)
    x = F.gelu(_batch_norm(sd, "patch_embed.norm1", x))
    x = F.conv2d(x, sd["patch_embed.proj2.weight"], sd["patch_embed.proj2.bias"], stride=2, padding=1)
    x = _batch_norm(sd, "patch_embed.norm2", x)
    for stage in range(1, 5):
        if stage > 1:
            x = F.conv2d(x, sd[f"patch_embed{stage}.proj.weight"], sd[f"patch_embed{stage}.proj.bias"], stride=2,
                         padding=1)  # fmt: skip
            x = _batch_norm(sd, f"patch_embed{stage}.norm", x)
        pos = sd[f"pos_embed{stage}"].permute(0, 3, 1, 2)
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = x + pos
        for block in range(depths[stage - 1]):
            p = f"blocks{stage}.{block}"
            scale1 = sd.get(f"{p}.layer_scale_1", torch.ones(1)).view(1, -1, 1, 1)
            scale2 = sd.get(f"{p}.layer_scale_2", torch.ones(1)).view(1, -1, 1, 1)
            mixed = reference_mixer(sd, f"{p}.attn", _layer_norm_map(sd, f"{p}.norm1", x), ramp[stage - 1][block],
                                    pool=stage <= 2)  # fmt: skip
            x = x + scale1 * mixed
            hidden = _layer_norm_map(sd, f"{p}.norm2", x).permute(0, 2, 3, 1)
            hidden = F.linear(F.gelu(F.linear(hidden, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])),
                              sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])  # fmt: skip
            x = x + scale2 * hidden.permute(0, 3, 1, 2)
    tokens = F.layer_norm(x.flatten(2).transpose(1, 2), x.shape[1:2], sd["norm.weight"], sd["norm.bias"], 1e-6)
    return F.linear(tokens.mean(1), sd["head.weight"], sd["head.bias"])


def official_state_dict(depths, dims, ramp, img_size: int, num_classes: int, seed: int = 0) -> dict[str, Tensor]:
    """A synthetic checkpoint with the official key names and shapes (sail-sg/iFormer inception_transformer.py).

    Values are random, LayerScale in [0.5, 1] and BatchNorm statistics non-trivial, so that every path matters."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.1) -> Tensor:
        return scale * torch.randn(*shape, generator=g)

    def bn(prefix: str, n: int) -> dict[str, Tensor]:
        return {f"{prefix}.weight": 1 + rand(n), f"{prefix}.bias": rand(n), f"{prefix}.running_mean": rand(n),
                f"{prefix}.running_var": 0.5 + torch.rand(n, generator=g), f"{prefix}.num_batches_tracked":
                torch.tensor(7)}  # fmt: skip

    c1 = dims[0]
    sd = {"patch_embed.proj1.weight": rand(c1 // 2, 3, 3, 3, scale=0.3), "patch_embed.proj1.bias": rand(c1 // 2),
          **bn("patch_embed.norm1", c1 // 2), "patch_embed.proj2.weight": rand(c1, c1 // 2, 3, 3),
          "patch_embed.proj2.bias": rand(c1), **bn("patch_embed.norm2", c1)}  # fmt: skip
    for stage in range(1, 5):
        dim = dims[stage - 1]
        if stage > 1:
            sd[f"patch_embed{stage}.proj.weight"] = rand(dim, dims[stage - 2], 3, 3, scale=0.05)
            sd[f"patch_embed{stage}.proj.bias"] = rand(dim)
            sd.update(bn(f"patch_embed{stage}.norm", dim))
        grid = img_size // (4 * 2 ** (stage - 1))
        sd[f"pos_embed{stage}"] = rand(1, grid, grid, dim)
        for block, heads in enumerate(ramp[stage - 1]):
            p = f"blocks{stage}.{block}"
            low = 32 * heads
            high = dim - low
            fused = 2 * high + low
            sd.update({
                f"{p}.norm1.weight": 1 + rand(dim), f"{p}.norm1.bias": rand(dim),
                f"{p}.attn.high_mixer.conv1.weight": rand(high, high // 2, 1, 1, scale=0.2),
                f"{p}.attn.high_mixer.proj1.weight": rand(high, 1, 3, 3, scale=0.3),
                f"{p}.attn.high_mixer.proj2.weight": rand(high, high // 2, 1, 1, scale=0.2),
                f"{p}.attn.high_mixer.proj2.bias": rand(high),
                f"{p}.attn.low_mixer.qkv.weight": rand(3 * low, low, scale=0.2),
                f"{p}.attn.low_mixer.qkv.bias": rand(3 * low),
                f"{p}.attn.conv_fuse.weight": rand(fused, 1, 3, 3, scale=0.3),
                f"{p}.attn.proj.weight": rand(dim, fused, 1, 1), f"{p}.attn.proj.bias": rand(dim),
                f"{p}.norm2.weight": 1 + rand(dim), f"{p}.norm2.bias": rand(dim),
                f"{p}.mlp.fc1.weight": rand(4 * dim, dim), f"{p}.mlp.fc1.bias": rand(4 * dim),
                f"{p}.mlp.fc2.weight": rand(dim, 4 * dim), f"{p}.mlp.fc2.bias": rand(dim),
            })  # fmt: skip
            if stage >= 3:
                sd[f"{p}.layer_scale_1"] = 0.5 + 0.5 * torch.rand(dim, generator=g)
                sd[f"{p}.layer_scale_2"] = 0.5 + 0.5 * torch.rand(dim, generator=g)
    sd.update({"norm.weight": 1 + rand(dims[-1]), "norm.bias": rand(dims[-1]),
               "head.weight": rand(num_classes, dims[-1]), "head.bias": rand(num_classes)})  # fmt: skip
    return sd


def converted_test_model(img_size: int = 32, **kwargs) -> tuple[InceptionTransformer, dict[str, Tensor]]:
    official = official_state_dict(*TEST_VARIANT, img_size=32, num_classes=10)
    model = build_test(img_size=img_size, **kwargs).eval()
    model.load_state_dict(checkpoint_filter_fn(official, model))
    return model, official


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 3, 32, 64), (1, 3, 64, 48)])
def test_converted_model_matches_spec_reference(shape: tuple[int, ...]) -> None:
    """Conversion of official keys + the whole architecture, against the reference (square and non-square)."""
    model, official = converted_test_model()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference_forward(official, x, *TEST_VARIANT[::2])
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    # the training path (autograd on, no in-place shortcuts) computes the same function
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_conversion_places_tensors() -> None:
    model, official = converted_test_model()
    block = model.stages[2].blocks[1]
    torch.testing.assert_close(model.stem.conv1.weight, official["patch_embed.proj1.weight"])
    torch.testing.assert_close(model.stages[3].downsample.norm.running_var, official["patch_embed4.norm.running_var"])
    torch.testing.assert_close(block.mixer.high_mixer.conv_pointwise.weight,
                               official["blocks3.1.attn.high_mixer.conv1.weight"].flatten(1))  # fmt: skip
    torch.testing.assert_close(block.mixer.proj.weight, official["blocks3.1.attn.proj.weight"].flatten(1))
    torch.testing.assert_close(block.ls2.gamma, official["blocks3.1.layer_scale_2"])
    torch.testing.assert_close(model.pos_embed2, official["pos_embed2"])


def test_conversion_reports_every_bad_key_at_once() -> None:
    model = build_test()
    official = official_state_dict(*TEST_VARIANT, img_size=32, num_classes=10)
    del official["blocks3.1.attn.low_mixer.qkv.bias"]
    official["blocks2.0.attn.extra.weight"] = torch.zeros(3)
    official["blocks1.0.mlp.fc1.weight"] = torch.zeros(5, 64)
    with pytest.raises(ValueError) as error:
        checkpoint_filter_fn(official, model)
    message = str(error.value)
    assert "stages.2.blocks.1.mixer.low_mixer.qkv.bias" in message  # missing, under its vitlab name
    assert "stages.1.blocks.0.attn.extra.weight" in message  # unexpected
    assert "stages.0.blocks.0.mlp.fc1.weight: checkpoint (5, 64), model (256, 64)" in message  # mis-shaped
    assert message.count("\n") < 12  # one compact report


def test_conversion_accepts_wrapped_and_vitlab_checkpoints() -> None:
    model, official = converted_test_model()
    wrapped = {"model": {f"module.{k}": v for k, v in official.items()}}
    again = build_test()
    again.load_state_dict(checkpoint_filter_fn(wrapped, again))
    resaved = build_test()
    resaved.load_state_dict(checkpoint_filter_fn(model.state_dict(), resaved))
    for a, b in zip(again.state_dict().values(), resaved.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_official_file_loads_through_timm_pretrained_file(tmp_path) -> None:
    official = official_state_dict(*TEST_VARIANT, img_size=32, num_classes=10)
    path = tmp_path / "iformer_test.pth"
    torch.save(official, path)
    model = timm.create_model("test_iformer", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.stages[0].blocks[0].mlp.fc2.bias, official["blocks1.0.mlp.fc2.bias"])
    # a different number of classes: timm drops the classifier, everything else loads
    retargeted = timm.create_model("test_iformer", pretrained=True, num_classes=3,
                                   pretrained_cfg_overlay=dict(file=str(path)))  # fmt: skip
    assert retargeted.head.out_features == 3
    torch.testing.assert_close(retargeted.norm.weight, official["norm.weight"])


def test_pretrained_without_a_file_says_what_to_fetch() -> None:
    with pytest.raises(ValueError, match=r"iformer_small\.pth.*pretrained_cfg_overlay=dict\(file="):
        timm.create_model("iformer_small", pretrained=True)


# ---------------------------------------------------------------------------------------------------------------------
# Position embeddings at other resolutions


def test_runtime_interpolation_equals_preinterpolated_checkpoint() -> None:
    """Spec section 5.3: a model storing the small grid and interpolating at run time equals one whose embeddings
    were interpolated once by the converter (the 384 case, at tiny scale: grids of 32 -> 64 px inputs)."""
    small_grid, official = converted_test_model(img_size=32)
    large_grid = build_test(img_size=64).eval()
    large_grid.load_state_dict(checkpoint_filter_fn(official, large_grid))
    assert large_grid.pos_embed1.shape == (1, 16, 16, 64)
    expected = F.interpolate(official["pos_embed1"].permute(0, 3, 1, 2), size=(16, 16), mode="bilinear")
    torch.testing.assert_close(large_grid.pos_embed1, expected.permute(0, 2, 3, 1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(small_grid(x), large_grid(x), rtol=0, atol=1e-6)


def test_224_checkpoint_converts_into_384_model() -> None:
    """Released 384 checkpoints store 224 grids (pitfall 6): the converter resizes them to the 384 grids."""
    depths, dims, ramp = VARIANTS["small"]
    official = official_state_dict(depths, dims, ramp, img_size=224, num_classes=1000)
    model = build_meta("iformer_small_384")
    converted = checkpoint_filter_fn(official, model)
    assert [tuple(converted[f"pos_embed{s}"].shape) for s in range(1, 5)] == [
        (1, 96, 96, 96), (1, 48, 48, 192), (1, 24, 24, 320), (1, 12, 12, 384)]  # fmt: skip
    assert all(converted[k].shape == v.shape for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------------------------------
# Mixer details


def test_pooling_upsampling_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    """With attention replaced by identity, the low path of stages 1-2 is 2x2 average then nearest upsampling."""
    monkeypatch.setattr(LowFrequencyMixer, "attend", lambda self, x: x)
    model = build_test().eval()
    for stage in model.stages[:2]:
        mixer = stage.blocks[0].mixer
        x = torch.randn(2, 6, 10, stage.blocks[0].norm1.normalized_shape[0])
        with torch.no_grad():
            low_out = mixer.mix(x)[..., 2 * mixer.high_dim :]
        low_in = x[..., mixer.high_dim :]
        expected = torch.empty_like(low_in)
        for i in range(6):
            for j in range(10):
                top, left = 2 * (i // 2), 2 * (j // 2)
                expected[:, i, j] = low_in[:, top : top + 2, left : left + 2].mean(dim=(1, 2))
        torch.testing.assert_close(low_out, expected)


def test_fused_and_explicit_attention_agree() -> None:
    model, _ = converted_test_model()
    x = torch.randn(2, 3, 64, 64)
    mixers = [m for m in model.modules() if isinstance(m, LowFrequencyMixer)]
    assert all(m.fused_attn for m in mixers) == timm.layers.use_fused_attn()
    with torch.no_grad():
        for m in mixers:
            m.fused_attn = True
        fused = model(x)
        for m in mixers:
            m.fused_attn = False
        explicit = model(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


def test_set_fused_attn_switches_construction() -> None:
    """`vitlab info` counts FLOPs after timm.layers.set_fused_attn(False): the model must follow that switch."""
    previous = timm.layers.use_fused_attn()
    try:
        timm.layers.set_fused_attn(False)
        model = build_test()
        assert not any(m.fused_attn for m in model.modules() if isinstance(m, LowFrequencyMixer))
    finally:
        timm.layers.set_fused_attn(previous)


def test_cpu_chunking_and_inference_path_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = converted_test_model()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        whole = model(x)
    monkeypatch.setattr(iformer_module, "CPU_CHUNK_ELEMENTS", 1)  # one image at a time in every stage
    # The same arithmetic on fewer rows: CPU matrix kernels block by batch size, so float32 rounding may differ in the
    # last bits (1.9e-6 on logits of size ~1 on an AVX-512 machine); a wrong chunk would differ by far more.
    with torch.no_grad():
        torch.testing.assert_close(model(x), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x), whole, rtol=1e-5, atol=1e-5)  # autograd path
    assert whole.abs().max() > 0.1  # the logits are not trivially close


# ---------------------------------------------------------------------------------------------------------------------
# The memory-lean training path (autograd functions that recompute the cheap ops in backward)


def _output_and_grads(model: nn.Module, x: Tensor, lean: bool, monkeypatch: pytest.MonkeyPatch, dtype=None):
    monkeypatch.setattr(iformer_module, "LEAN_BACKWARD", lean)
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model(x)
    (out.float() ** 2).sum().backward()
    return out.detach(), {"input": x.grad, **{n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.parametrize("size", [(32, 32), (32, 64)])
def test_lean_backward_equals_plain_autograd(size: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Same output and, to float rounding, the same gradients for the input and every parameter (fp32)."""
    model = build_test(layer_scale_init=0.5).train()  # LayerScale 0.5 so that stages 3-4 matter in the gradients
    x = torch.randn(3, 3, *size)
    out, grads = _output_and_grads(model, x, True, monkeypatch)
    expected_out, expected = _output_and_grads(model, x, False, monkeypatch)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-6)
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_lean_backward_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16 autocast the output is the plain path's bit for bit, and the gradients differ from it no more than
    it differs from the fp32 gradients (only where bf16 rounding happens differs)."""
    model = build_test(layer_scale_init=0.5).train()
    x = torch.randn(3, 3, 32, 32)
    out, grads = _output_and_grads(model, x, True, monkeypatch, torch.bfloat16)
    expected_out, expected = _output_and_grads(model, x, False, monkeypatch, torch.bfloat16)
    _, exact = _output_and_grads(model, x, False, monkeypatch)
    assert torch.equal(out, expected_out)
    for name in exact:
        reference = exact[name].norm()
        lean_vs_plain = (grads[name] - expected[name]).norm() / reference
        plain_vs_fp32 = (expected[name] - exact[name]).norm() / reference
        assert lean_vs_plain <= max(plain_vs_fp32, 1e-3), name


@pytest.mark.parametrize("pool_low,scaled", [(True, False), (False, True)])
def test_inception_fusion_gradcheck(pool_low: bool, scaled: bool) -> None:
    """Finite differences in float64 against the hand-written backward of `_InceptionFusion`."""
    torch.manual_seed(0)
    high_dim, heads, height, width = 4, 2, 4, 6
    low_tokens = (height // 2) * (width // 2) if pool_low else height * width
    fused = 2 * high_dim + 32 * heads

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    layer_scale = rand(5) if scaled else None
    inputs = (rand(2, height, width, high_dim), rand(2, heads, low_tokens, 32), layer_scale, pool_low,
              rand(high_dim, high_dim // 2), rand(high_dim, 1, 3, 3), rand(high_dim, high_dim // 2), rand(high_dim),
              rand(fused, 1, 3, 3), rand(5, fused), rand(5))  # fmt: skip
    assert torch.autograd.gradcheck(iformer_module._InceptionFusion.apply, inputs)


@pytest.mark.parametrize("scaled", [False, True])
def test_layer_norm_mlp_gradcheck(scaled: bool) -> None:
    torch.manual_seed(0)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    layer_scale = rand(6) if scaled else None
    inputs = (rand(2, 3, 5, 6), 1e-6, layer_scale, rand(6), rand(6), rand(24, 6), rand(24), rand(6, 24), rand(6))
    assert torch.autograd.gradcheck(iformer_module._LayerNormMlp.apply, inputs)


def test_average_pool_2x2_gradcheck() -> None:
    x = torch.randn(2, 4, 6, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(iformer_module._AveragePool2x2.apply(x),
                               F.avg_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1))  # fmt: skip
    assert torch.autograd.gradcheck(iformer_module._AveragePool2x2.apply, (x,))


def test_lean_backward_saves_less(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the lean path: fewer bytes kept for backward (parameters left out)."""
    model = build_test().train()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_bytes(lean: bool) -> int:
        monkeypatch.setattr(iformer_module, "LEAN_BACKWARD", lean)
        storages: dict[int, int] = {}

        def pack(tensor: Tensor) -> Tensor:
            if tensor.untyped_storage().data_ptr() not in parameters:
                storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(torch.randn(2, 3, 64, 64))
        return sum(storages.values())

    assert saved_bytes(True) < 0.75 * saved_bytes(False)


def test_attention_only_ablation() -> None:
    model = build_test(mixer_mode="attention_only")
    assert all(b.mixer.high_dim == 0 and b.mixer.high_mixer is None for s in model.stages for b in s.blocks)
    assert count(model) == model_params(TEST_VARIANT[0], TEST_VARIANT[1], [[2], [3], [4, 4], [5]], 32, 10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ---------------------------------------------------------------------------------------------------------------------
# Input checks, shapes, timm contract


@pytest.mark.parametrize("size,stage,grid", [((36, 36), 1, "9x9"), ((40, 32), 2, "5x4"), ((32, 24), 2, "4x3")])
def test_odd_token_maps_are_rejected(size: tuple[int, int], stage: int, grid: str) -> None:
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]} \(HxW\) input gives stage {stage} a {grid}"):
        build_test()(torch.randn(1, 3, *size))


def test_video_input_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"5-D tensor of shape \(1, 3, 4, 32, 32\)"):
        build_test()(torch.randn(1, 3, 4, 32, 32))


def test_non_square_shapes() -> None:
    model = build_test().eval()
    with torch.no_grad():
        final, maps = model.forward_intermediates(torch.randn(2, 3, 32, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 8, 16), (2, 96, 4, 8), (2, 128, 2, 4), (2, 160, 1, 2)]
    assert final.shape == (2, 1, 2, 160)
    assert model.forward_head(final).shape == (2, 10)


def test_features_only_prunes_unused_stages() -> None:
    extractor = timm.create_model("test_iformer", features_only=True, out_indices=(1, 2))
    names = [n for n, _ in extractor.named_parameters()]
    assert not any(n.startswith(("model.stages.3", "model.pos_embed4", "model.head")) for n in names)
    outs = extractor(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 96, 4, 4), (2, 128, 2, 2)]


def test_no_weight_decay_names_real_parameters() -> None:
    model = build_test()
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {"pos_embed1", "pos_embed2", "pos_embed3", "pos_embed4"}
    assert all(name in names for name in model.no_weight_decay())


def test_group_matcher_orders_stages() -> None:
    from timm.models import group_parameters

    model = build_test()
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        group_of = {name: index for index, names in groups.items() for name in names}
        # pos_embed{s+1} is added right after stage s's downsampling layer, so it shares its group
        assert group_of["pos_embed1"] == group_of["stem.conv1.weight"] == 0
        for stage in (1, 2, 3):
            assert group_of[f"pos_embed{stage + 1}"] == group_of[f"stages.{stage}.downsample.conv.weight"]
        assert group_of["stages.0.blocks.0.norm1.weight"] < group_of["stages.2.blocks.1.mlp.fc1.weight"]
        assert group_of["head.weight"] == max(groups)
    fine = group_parameters(model, model.group_matcher())
    assert len(fine) == 1 + sum(len(s.blocks) for s in model.stages) + 1  # stem, one per block, head


def test_gradient_checkpointing_matches() -> None:
    model, _ = converted_test_model()
    model.train()
    x = torch.randn(2, 3, 32, 32)
    plain = model(x)
    plain.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    checkpointed = model(x)
    checkpointed.sum().backward()
    torch.testing.assert_close(checkpointed, plain)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_initialisation() -> None:
    """Spec section 2.1: trunc-normal(0.02) weights (head included), zero biases, LayerScale 1e-6 in stages 3-4."""
    torch.manual_seed(0)
    model = timm.create_model("iformer_small")
    assert 0.015 < model.head.weight.std().item() < 0.025  # not zero-initialised (pitfall 8)
    assert 0.015 < model.pos_embed1.std().item() < 0.025
    assert model.stages[2].blocks[0].mixer.proj.bias.abs().max() == 0
    assert torch.all(model.stages[3].blocks[2].ls2.gamma == 1e-6)
    assert model.stages[0].downsample.__class__ is nn.Identity
    assert torch.all(model.stem.norm1.weight == 1)


def test_drop_path_rises_linearly() -> None:
    model = build_meta("iformer_small", drop_path_rate=0.2)
    rates = [b.drop_path1.drop_prob if not isinstance(b.drop_path1, nn.Identity) else 0.0
             for s in model.stages for b in s.blocks]  # fmt: skip
    assert rates == pytest.approx(torch.linspace(0, 0.2, 18).tolist())


def test_default_cfgs() -> None:
    for name in FULL_SIZE:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.input_size == ((3, 384, 384) if name.endswith("384") else (3, 224, 224))
        assert cfg.crop_pct == (1.0 if name.endswith("384") else 0.9)
        assert cfg.num_classes == 1000 and cfg.first_conv == "stem.conv1" and cfg.classifier == "head"
    test_cfg = timm.models.get_pretrained_cfg("test_iformer")
    assert test_cfg.input_size == (3, 32, 32) and test_cfg.num_classes == 10


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs (spec section 5.2): fvcore, eval mode, explicit attention


FLOP_TARGETS = {"iformer_small": 4.8485e9, "iformer_base": 9.3784e9, "iformer_large": 14.0469e9,
                "iformer_small_384": 16.098e9, "iformer_base_384": 30.552e9, "iformer_large_384": 45.335e9}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SIZE)
def test_fvcore_flops_match_spec(name: str) -> None:
    from vitlab.models.profile import count_flops

    model = timm.create_model(name)
    size = model.pretrained_cfg["input_size"][-1]
    assert math.isclose(count_flops(model, (3, size, size)), FLOP_TARGETS[name], rel_tol=0.01)


@pytest.mark.slow
def test_small_forward_shapes_at_224() -> None:
    model = timm.create_model("iformer_small").eval()
    with torch.no_grad():
        _, maps = model.forward_intermediates(torch.randn(1, 3, 224, 224))
        logits = model(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [(96, 56, 56), (192, 28, 28), (320, 14, 14), (384, 7, 7)]
    assert logits.shape == (1, 1000)
