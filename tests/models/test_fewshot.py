"""SUN's few-shot backbones (spec specs/sun.md sections 2.6, 5 "Backbones", 6) and `feature_map` for any backbone."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
from torch import nn

import vitlab  # noqa: F401  (registers the models)
from vitlab.cli import main
from vitlab.models import list_vitlab_models
from vitlab.models.fewshot import (
    FewShotVisformer,
    LVViT,
    LVViTBlock,
    NoFeatureMapError,
    checkpoint_filter_fn,
    feature_map,
    pooled_feature,
)

# Backbone parameters (no classifier head), counted from the official code's definitions; the spec's 12.53M / 12.80M
# / 12.60M (section 2.6) rounded.
BACKBONE_PARAMS = {
    "visformer_micro_80": 12_531_392,
    "nest_micro_resembed_80": 12_795_456,
    "lvvit_micro_80": 12_597_312,
}
FINAL_MAP = {  # (C, h, w) at the registered input size
    "visformer_micro_80": (512, 5, 5),
    "nest_micro_resembed_80": (512, 5, 5),
    "lvvit_micro_80": (384, 5, 5),
    "test_visformer_fs32": (128, 4, 4),
    "test_nest_fs32": (128, 4, 4),
    "test_lvvit_fs32": (96, 4, 4),
    "resnet12_80": (640, 5, 5),
    "test_resnet12_fs32": (128, 4, 4),
}
TINY_PARAMS = {"test_visformer_fs32": 326_768, "test_nest_fs32": 383_632, "test_lvvit_fs32": 199_808}


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def images(*size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*size, generator=torch.Generator().manual_seed(seed))


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(BACKBONE_PARAMS))
def test_official_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        backbone = timm.create_model(name, num_classes=0)
        classifier = timm.create_model(name)  # 64 base classes by default (miniImageNet, CIFAR-FS)
    assert count(backbone) == BACKBONE_PARAMS[name]
    width = FINAL_MAP[name][0]
    assert classifier.num_classes == 64
    assert count(classifier) == BACKBONE_PARAMS[name] + 64 * width + 64
    spec_millions = {"visformer": 12.53, "nest": 12.80, "lvvit": 12.60}[name.split("_")[0]]
    assert round(BACKBONE_PARAMS[name] / 1e6, 2) == spec_millions


@pytest.mark.parametrize("name", sorted(TINY_PARAMS))
def test_tiny_parameter_counts(name: str) -> None:
    assert count(build(name, num_classes=0)) == TINY_PARAMS[name]
    assert TINY_PARAMS[name] < 500_000  # a few hundred thousand: minutes on CPU (spec section 6)


@pytest.mark.parametrize("name", sorted(FINAL_MAP))
def test_final_map_and_pooled_shapes(name: str) -> None:
    model = build(name, num_classes=0)
    channels, height, width = FINAL_MAP[name]
    side = model.pretrained_cfg["input_size"][-1]
    x = images(2, 3, side, side)
    with torch.no_grad():
        fmap = feature_map(model, x)
        pooled = pooled_feature(fmap)
        own = model(x)
    assert fmap.shape == (2, channels, height, width)
    assert pooled.shape == (2, channels) == own.shape
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))
    if isinstance(model, LVViT):  # its own head reads the class token, not the map's average
        assert not torch.allclose(own, pooled)
    else:
        torch.testing.assert_close(own, pooled)


def test_visformer_structure() -> None:
    """Spec section 2.6: 4 conv-only blocks at 128-d, 2 attention blocks at 256-d, 3 at 512-d, 6 heads, BatchNorm."""
    model = build("visformer_micro_80", num_classes=0)
    assert isinstance(model, FewShotVisformer)
    assert [len(model.stage1), len(model.stage2), len(model.stage3)] == [4, 2, 3]
    assert all(block.attn is None for block in model.stage1)
    assert [block.attn.num_heads for block in (*model.stage2, *model.stage3)] == [6] * 5
    assert [model.pos_embed1.shape, model.pos_embed2.shape, model.pos_embed3.shape] == [
        (1, 128, 20, 20),
        (1, 256, 10, 10),
        (1, 512, 5, 5),
    ]
    assert not any(isinstance(module, nn.LayerNorm) for module in model.modules())
    with torch.no_grad():
        stem = model.stem(images(1, 3, 80, 80))
    assert stem.shape == (1, 128, 20, 20)  # conv stem 3 -> 64 -> 128, /4


def test_resnet12_structure_and_counts() -> None:
    """Meta-Baseline's ResNet-12 (12.4M): 4 blocks of 3 convs, widths 64-160-320-640, each block a residual unit."""
    with torch.device("meta"):
        assert count(timm.create_model("resnet12_80", num_classes=0)) == 12_424_320
    model = build("test_resnet12_fs32", num_classes=0)
    assert count(model) == 501_600
    assert [block.conv3.out_channels for block in model.layers] == [16, 32, 64, 128]
    block = model.layers[0]
    x = images(2, 3, 32, 32)
    with torch.no_grad():  # the block against its formula: pool(act(bn3(conv3(a(conv2(a(conv1 x))))) + shortcut(x)))
        act = nn.functional.leaky_relu
        out = act(block.bn2(block.conv2(act(block.bn1(block.conv1(x)), 0.1))), 0.1)
        expected = nn.functional.max_pool2d(act(block.bn3(block.conv3(out)) + block.downsample(x), 0.1), 2)
        torch.testing.assert_close(block(x), expected)


def test_lvvit_block_divides_residual_branches() -> None:
    torch.manual_seed(0)
    block = LVViTBlock(dim=8, num_heads=2, mlp_ratio=3.0, skip_lam=2.0).eval()
    x = images(2, 5, 8)
    with torch.no_grad():
        y = x + block.attn(block.norm1(x)) / 2.0
        expected = y + block.mlp(block.norm2(y)) / 2.0
        torch.testing.assert_close(block(x), expected)


def test_drop_path_rate_reaches_blocks() -> None:
    model = build("visformer_micro_80", num_classes=0, drop_path_rate=0.5)
    assert model.stage3[-1].drop_path.drop_prob == pytest.approx(0.5)
    assert isinstance(model.stage1[0].drop_path, nn.Identity)  # the linear ramp starts at 0


def test_non_square_inputs_of_the_few_shot_backbones() -> None:
    x = images(2, 3, 32, 48)
    with torch.no_grad():
        assert feature_map(build("test_visformer_fs32"), x).shape == (2, 128, 4, 6)
        assert feature_map(build("test_lvvit_fs32"), x).shape == (2, 96, 4, 6)
    with pytest.raises(ValueError, match="FewShotNest: built for 32x32"):
        feature_map(build("test_nest_fs32"), x)


def test_feature_map_of_a_vit_drops_prefix_tokens_and_uses_the_patch_grid() -> None:
    """A timm ViT with a class token and 2 register tokens on a 32x48 input, patch 8: a 4x6 grid (not a square)."""
    model = build("vit_tiny_patch16_224", img_size=(32, 48), patch_size=8, depth=1, reg_tokens=2, num_classes=0)
    x = images(2, 3, 32, 48)
    with torch.no_grad():
        tokens = model.forward_features(x)
        fmap = feature_map(model, x)
    assert model.num_prefix_tokens == 3 and tokens.shape == (2, 3 + 24, 192)
    assert fmap.shape == (2, 192, 4, 6)
    for row in range(4):
        for col in range(6):
            torch.testing.assert_close(fmap[:, :, row, col], tokens[:, 3 + row * 6 + col])


def test_feature_map_of_a_dynamic_size_vit() -> None:
    model = build("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, dynamic_img_size=True, num_classes=0)
    with torch.no_grad():
        assert feature_map(model, images(1, 3, 40, 24)).shape == (1, 192, 5, 3)


def test_feature_map_of_a_cnn() -> None:
    model = build("resnet10t", num_classes=0)
    x = images(2, 3, 64, 96)
    with torch.no_grad():
        fmap = feature_map(model, x)
        torch.testing.assert_close(fmap, model.forward_features(x))
    assert fmap.shape == (2, 512, 2, 3)


def test_feature_map_of_iformer_is_channels_first() -> None:
    model = build("test_iformer", num_classes=0)
    x = images(2, 3, 64, 96)
    with torch.no_grad():
        tokens = model.forward_features(x)  # (B, H/32, W/32, C), channels-last
        fmap = feature_map(model, x)
    assert tokens.shape == (2, 2, 3, 160)
    assert fmap.shape == (2, 160, 2, 3)
    torch.testing.assert_close(fmap[:, :, 1, 2], tokens[:, 1, 2])


class _PooledOnly(nn.Module):
    """A backbone whose forward_features already pools: (B, 3, H, W) -> (B, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_feature_map_errors_name_the_model() -> None:
    x = images(2, 3, 32, 32)
    for model, name in ((_PooledOnly(), "_PooledOnly"), (nn.Flatten(), "Flatten")):
        with pytest.raises(NoFeatureMapError, match=name) as caught:
            feature_map(model, x)
        assert isinstance(caught.value, ValueError)
        assert "\n" not in str(caught.value)
    # a token model whose tokens are not its prefix tokens plus the patch grid: 1 + 16 tokens against a claimed 2x2 grid
    vit = build("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=0)
    vit.patch_embed.dynamic_feat_size = lambda size: (size[0] // 16, size[1] // 16)
    with pytest.raises(NoFeatureMapError, match="vit_tiny_patch16_224 gives 17 tokens"):
        feature_map(vit, x)


def test_pretrained_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="visformer_micro_80: vitlab ships no weights.*checkpoint_filter_fn"):
        timm.create_model("visformer_micro_80", pretrained=True)


def test_listed_by_vitlab_models(capsys: pytest.CaptureFixture) -> None:
    assert set(BACKBONE_PARAMS) | set(TINY_PARAMS) <= set(list_vitlab_models())
    assert main(["models", "*_80", "--json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(BACKBONE_PARAMS) <= set(rows)
    for name, params in BACKBONE_PARAMS.items():
        assert rows[name]["params"] == params + 64 * FINAL_MAP[name][0] + 64
        assert rows[name]["backbone_params"] == params
        assert rows[name]["input_size"] == [3, 80, 80]


def _official_layout(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vitlab keys -> the official repository's (models/visformer.py wraps every BatchNorm of the blocks, patch merges
    and final norm in a module whose BatchNorm2d is `.bn`; models/lvvit.py calls the stem and projection
    `patch_embed`), under the `encoder.` prefix of its classifier / Meta-Baseline wrappers, head dropped."""
    official = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue
        if name.startswith("visformer"):
            key = re.sub(r"(^|\.)(norm\d?)\.", r"\1\2.bn.", key)
        if name.startswith("lvvit"):
            key = "patch_embed." + key if key.startswith("proj.") else re.sub(r"^stem\.", "patch_embed.", key)
        official[f"encoder.{key}"] = value
    official["temp"] = torch.tensor(10.0)  # Meta-Baseline's learnable temperature, not a backbone weight
    return official


@pytest.mark.parametrize("name", sorted(BACKBONE_PARAMS))
def test_official_checkpoint_keys_load(name: str) -> None:
    source = build(name, num_classes=0)
    official = _official_layout(name, source.state_dict())
    if name.startswith("visformer"):
        assert "encoder.stage2.0.norm1.bn.weight" in official and "encoder.norm.bn.running_var" in official
        assert "encoder.stem.bn1.weight" in official  # the stem's own BatchNorms are not wrapped
    if name.startswith("lvvit"):
        assert "encoder.patch_embed.proj.weight" in official and "encoder.patch_embed.conv1.weight" in official
    target = build(name)  # 64-class head: kept from the new model
    target.load_state_dict(checkpoint_filter_fn({"model_sd": official}, target))
    x = images(1, 3, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(feature_map(target, x), feature_map(source, x))
    official.pop(next(iter(official)))
    with pytest.raises(ValueError, match="checkpoint does not match: missing"):
        checkpoint_filter_fn({"model_sd": official}, target)


def test_visformer_intermediates_and_features_only() -> None:
    model = build("test_visformer_fs32", num_classes=0)
    x = images(2, 3, 32, 32)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [tuple(m.shape) for m in maps] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4)]
        torch.testing.assert_close(final, model.forward_features(x))
        extractor = build("test_visformer_fs32", num_classes=0, features_only=True, out_indices=(1,))  # same weights
        (middle,) = extractor(x)
    torch.testing.assert_close(middle, maps[1])
    assert not hasattr(extractor.model, "stage3")  # pruned after the requested stage
