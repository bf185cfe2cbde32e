"""AR lens overlays (vitlab.analysis.overlay) against the test values of spec ar.md §5."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import vitlab.models  # noqa: F401  (registers test_iformer)
from vitlab.analysis.overlay import (
    apply_lut,
    attention_weights,
    blend,
    cartoon,
    cls_attention_map,
    jet,
    normalize_map,
    place_sticker,
    postprocess,
    token_map,
    train_segmentation_head,
    upsample_map,
)
from vitlab.models.classifier import ImageClassifier


def full(value: float, shape: tuple[int, ...] = (1, 3, 4, 4)) -> torch.Tensor:
    return torch.full(shape, value)


# --- blending (§5 "Blending") -----------------------------------------------------------------------------------------

def test_tint_test_values() -> None:
    x, one = full(0.25), full(1.0, (1, 1, 4, 4))
    assert torch.equal(blend(x, one, "tint", alpha=0.5, color=(0.75, 0.75, 0.75)), full(0.5))
    assert torch.equal(blend(x, torch.zeros_like(one), "tint", alpha=0.5, color=(0.75,) * 3), x)
    assert torch.equal(blend(x, one, "tint", alpha=0.0, color=(0.75,) * 3), x)
    assert torch.equal(blend(x, one, "tint", alpha=1.0, color=(0.75,) * 3), full(0.75))


def test_background_test_values() -> None:
    x, one = torch.rand(2, 3, 5, 7), torch.ones(2, 1, 5, 7)
    b = torch.rand(2, 3, 5, 7)
    assert torch.equal(blend(x, one, "background", background=b), x)
    assert torch.equal(blend(x, torch.zeros_like(one), "background", background=b), b)
    green = blend(x, torch.zeros_like(one), "background", background=(0.0, 1.0, 0.0))
    assert torch.equal(green[:, 1], torch.ones(2, 5, 7)) and torch.equal(green[:, 0], torch.zeros(2, 5, 7))


def test_heatmap_and_recolor_formulas() -> None:
    x, m = torch.rand(1, 3, 6, 6), torch.rand(1, 1, 6, 6)
    assert torch.allclose(blend(x, m, "heatmap", alpha=0.3), 0.7 * x + 0.3 * jet(m))
    lens = lambda t: 1 - t  # noqa: E731
    assert torch.allclose(blend(x, m, "recolor", lens=lens), m * (1 - x) + (1 - m) * x)
    with pytest.raises(ValueError, match="unknown mode"):
        blend(x, m, "sparkle")
    with pytest.raises(ValueError, match="does not match"):
        blend(x, torch.rand(1, 1, 3, 3), "tint")


# --- jet (§2.5) -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("t", "rgb"), [(0.0, (0, 0, 0.5)), (0.25, (0, 0.5, 1)), (0.5, (0.5, 1, 0.5)),
                                        (1.0, (0.5, 0, 0))])
def test_jet_test_values(t: float, rgb: tuple[float, float, float]) -> None:
    assert torch.equal(jet(torch.full((1, 1, 1, 1), t)).flatten(), torch.tensor(rgb, dtype=torch.float32))


# --- normalisation and upsampling (§2.3) ------------------------------------------------------------------------------

def test_constant_map_normalises_to_zero() -> None:
    m = normalize_map(torch.full((2, 3, 5), 7.0))
    assert torch.equal(m, torch.zeros(2, 3, 5))


def test_normalise_is_per_image() -> None:
    a = torch.stack([torch.arange(6.0).view(2, 3), 10 * torch.arange(6.0).view(2, 3) - 4])
    m = normalize_map(a)
    assert torch.allclose(m[0], m[1]) and m.min() == 0 and abs(float(m.max()) - 1) < 1e-6


@pytest.mark.parametrize(("i", "j"), [(0, 0), (1, 2), (2, 4)])
def test_nearest_upsampling_covers_the_cell_block(i: int, j: int) -> None:
    h, w, s = 3, 5, 4
    grid = torch.zeros(1, h, w)
    grid[0, i, j] = 1
    up = upsample_map(grid, (h * s, w * s), "nearest")[0, 0]
    expected = torch.zeros(h * s, w * s)
    expected[i * s:(i + 1) * s, j * s:(j + 1) * s] = 1
    assert torch.equal(up, expected)


def test_postprocess_shapes_non_square_and_threshold() -> None:
    a = torch.rand(2, 3, 7)
    m = postprocess(a, (12, 28))
    assert m.shape == (2, 1, 12, 28) and 0 <= float(m.min()) and float(m.max()) <= 1
    mask = postprocess(a, (12, 28), mode="nearest", threshold=0.5)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


# --- CAM exactness (§5) -----------------------------------------------------------------------------------------------

class TinyCNN(nn.Module):
    """conv -> ReLU -> conv (B, 16, h, w) -> global average pool -> linear, with timm's head API."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.num_features = 16
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1))
        self.fc = nn.Linear(16, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cam_mean_equals_logit(model: nn.Module, x: torch.Tensor, expected_grid: tuple[int, int]) -> None:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        for target in (None, 3):
            cam = token_map(model, x, "cam", target=target)
            assert cam.shape == (x.shape[0], *expected_grid)
            c = logits.argmax(1) if target is None else torch.full((x.shape[0],), target)
            assert torch.allclose(cam.mean(dim=(1, 2)), logits.gather(1, c[:, None])[:, 0], atol=1e-5, rtol=0)


def test_cam_exact_on_test_iformer() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(timm.create_model("test_iformer", img_size=64), mean=(0.5,) * 3, std=(0.25,) * 3)
    _cam_mean_equals_logit(model, torch.rand(2, 3, 64, 64), (2, 2))


def test_cam_exact_on_a_small_cnn_non_square() -> None:
    torch.manual_seed(0)
    _cam_mean_equals_logit(TinyCNN(), torch.rand(3, 3, 16, 24), (4, 6))


def test_cam_exact_on_timm_resnet_and_gap_vit() -> None:
    torch.manual_seed(0)
    resnet = timm.create_model("resnet18", num_classes=4)
    _cam_mean_equals_logit(resnet, torch.rand(2, 3, 64, 96), (2, 3))
    vit = timm.create_model("vit_tiny_patch16_224", img_size=(16, 24), patch_size=4, depth=1, num_classes=4,
                            global_pool="avg", fc_norm=False)
    _cam_mean_equals_logit(vit, torch.rand(2, 3, 16, 24), (4, 6))


def test_cam_on_cls_token_vit_is_a_clear_error() -> None:
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, num_classes=4)
    with pytest.raises(ValueError, match="use source 'attention'"):
        token_map(vit, torch.rand(1, 3, 16, 16), "cam")
    gap_fc_norm = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, num_classes=4,
                                    global_pool="avg")  # LayerNorm after the mean: no exact CAM
    with pytest.raises(ValueError, match="not the mean"):
        token_map(gap_fc_norm, torch.rand(1, 3, 16, 16), "cam")


def test_attribute_source_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="TransZero"):
        token_map(TinyCNN(), torch.rand(1, 3, 16, 16), "attribute")
    with pytest.raises(ValueError, match="unknown map source"):
        token_map(TinyCNN(), torch.rand(1, 3, 16, 16), "saliency")


# --- attention (§5) ---------------------------------------------------------------------------------------------------

def _vit(**kw: object) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=(16, 24), patch_size=4, depth=2, num_classes=4,
                             **kw).eval()


def test_attention_rows_sum_to_one_and_grid_is_non_square() -> None:
    model = ImageClassifier(_vit(), mean=(0.5,) * 3, std=(0.5,) * 3)
    with torch.no_grad():
        amap, weights = cls_attention_map(model, torch.rand(2, 3, 16, 24), return_weights=True)
    assert amap.shape == (2, 4, 6)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 25), atol=1e-5)
    assert torch.allclose(amap.sum(dim=(1, 2)), 1 - weights[:, 0, 0], atol=1e-6)
    assert token_map(model, torch.rand(2, 3, 16, 24), "attention").shape == (2, 4, 6)


def test_hooked_weights_agree_with_the_model_attention() -> None:
    model = _vit()
    attn = model.blocks[-1].attn
    x = torch.rand(2, 3, 16, 24)
    seen: dict[str, torch.Tensor] = {}
    handles = [attn.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o)),
               attn.attn_drop.register_forward_hook(lambda m, i, o: seen.update(own=o))]
    with torch.no_grad():
        attn.fused_attn = True
        model.forward_features(x)
        fused_out, inp = seen["out"], seen["inp"]
        recomputed = attention_weights(attn, inp)  # (B, heads, N, N)
        # the recomputed weights reproduce the fused kernel's output
        v = attn.qkv(inp).reshape(2, 25, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)[2]
        out = attn.proj((recomputed @ v).transpose(1, 2).reshape(2, 25, -1))
        assert torch.allclose(out, fused_out, atol=1e-5)
        # and equal the non-fused path's own weights
        attn.fused_attn = False
        model.forward_features(x)
        assert torch.allclose(recomputed, seen["own"], atol=1e-6)
        hooked = cls_attention_map(model, x)
        assert torch.allclose(hooked, seen["own"].mean(1)[:, 0, 1:].reshape(2, 4, 6), atol=1e-6)
    for h in handles:
        h.remove()


def test_attention_on_a_cnn_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a ViT with a CLS token"):
        token_map(TinyCNN(), torch.rand(1, 3, 16, 16), "attention")


# --- lenses (§2.6) ----------------------------------------------------------------------------------------------------

def test_identity_lut_and_invert() -> None:
    x = torch.rand(2, 3, 9, 11)
    assert (apply_lut(x, "identity") - x).abs().max() <= 0.5 / 255 + 1e-7
    assert torch.allclose(apply_lut(x, "invert"), 1 - torch.round(x * 255) / 255, atol=1e-6)
    sepia = apply_lut(x, "sepia")
    assert sepia.shape == x.shape and float(sepia.min()) >= 0 and float(sepia.max()) <= 1
    with pytest.raises(ValueError, match="unknown table"):
        apply_lut(x, "vintage")


def test_cartoon_constant_image_is_posterised_without_outlines() -> None:
    x = full(0.43, (1, 3, 12, 12))
    out = cartoon(x)
    assert torch.allclose(out, torch.full_like(x, 0.4))  # round(0.43·5)/5


def test_cartoon_step_edge_outlines_on_step_columns_only() -> None:
    x = torch.zeros(1, 3, 10, 16)
    x[..., 8:] = 1.0
    out = cartoon(x)
    black = (out.sum(dim=1)[0] == 0)
    outline_columns = set(torch.nonzero(black.any(dim=0)).flatten().tolist())
    assert outline_columns <= {0, 1, 2, 3, 4, 5, 6, 7, 8}  # left side is black anyway
    assert torch.equal(out[0, :, :, 9:], torch.ones(3, 10, 7))  # right of the step: untouched white
    assert bool(black[:, 8].all())  # the step column itself is outlined
    # on a mid-grey to white step, only the two columns beside the step are outlined
    x[..., :8] = 0.2
    black = cartoon(x).sum(dim=1)[0] == 0
    assert set(torch.nonzero(black.any(dim=0)).flatten().tolist()) == {7, 8}
    assert bool(black[:, 7:9].all())


def test_sticker_is_centred_on_the_mask_centroid() -> None:
    x = torch.zeros(1, 3, 32, 40)
    m = torch.zeros(1, 1, 32, 40)
    m[0, 0, 10:15, 18:23] = 1  # centroid (12, 20)
    sticker = torch.ones(4, 5, 5)
    out = place_sticker(x, m, sticker, scale=5 / 32)
    covered = torch.nonzero(out[0, 0] == 1)
    assert covered[:, 0].min() == 10 and covered[:, 0].max() == 14
    assert covered[:, 1].min() == 18 and covered[:, 1].max() == 22
    assert torch.equal(place_sticker(x, torch.zeros_like(m), sticker), x)


def test_recolor_with_lut_only_inside_the_mask() -> None:
    x = torch.rand(1, 3, 8, 8)
    m = torch.zeros(1, 1, 8, 8)
    m[..., :4] = 1
    out = blend(x, m, "recolor", lens=lambda t: apply_lut(t, "invert"))
    assert torch.equal(out[..., 4:], x[..., 4:])
    assert torch.allclose(out[..., :4], 1 - torch.round(x[..., :4] * 255) / 255, atol=1e-6)


# --- segmentation head (§5) -------------------------------------------------------------------------------------------

def squares(n: int, size: int, seed: int, side: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise backgrounds in [0, 0.6] with a bright (1.0) side x side square at a random position.

    Side 24 on a 4-pixel feature grid: a head that is right on every grid cell still misses up to 2 pixels per edge
    (nearest upsampling), which alone costs a 16-pixel square about 0.2 IoU; at 24 pixels it costs about 0.1.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 0.6
    masks = torch.zeros(n, size, size)
    tops = torch.randint(0, size - side + 1, (n,), generator=g)
    lefts = torch.randint(0, size - side + 1, (n,), generator=g)
    rows, cols = torch.arange(size).view(1, -1, 1), torch.arange(size).view(1, 1, -1)
    inside = ((rows >= tops.view(-1, 1, 1)) & (rows < tops.view(-1, 1, 1) + side)
              & (cols >= lefts.view(-1, 1, 1)) & (cols < lefts.view(-1, 1, 1) + side))
    masks[inside] = 1
    images = torch.where(inside.unsqueeze(1), torch.ones_like(images), images)
    return images, masks


def test_segmentation_head_finds_squares_on_frozen_test_iformer() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(timm.create_model("test_iformer", img_size=64), mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, masks = squares(64, 64, seed=1)
    head = train_segmentation_head(model, images, masks, stage=0, steps=200)
    test_images, test_masks = squares(32, 64, seed=2)
    probs = token_map(model, test_images, "segmentation", head=head)  # (B, 16, 16)
    assert probs.shape == (32, 16, 16)
    pred = upsample_map(probs, (64, 64), "nearest")[:, 0] > 0.5
    truth = test_masks > 0.5
    iou = float((pred & truth).sum()) / float((pred | truth).sum())
    assert iou >= 0.8, iou
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the backbone stays frozen
    with pytest.raises(ValueError, match="needs head="):
        token_map(model, test_images, "segmentation")


# --- determinism (§5) -------------------------------------------------------------------------------------------------

def test_bitwise_deterministic() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(timm.create_model("test_iformer", img_size=64), mean=(0.5,) * 3, std=(0.25,) * 3)
    x = torch.rand(2, 3, 64, 64)
    m1 = postprocess(token_map(model, x, "cam"), (64, 64))
    m2 = postprocess(token_map(model, x.clone(), "cam"), (64, 64))
    assert torch.equal(m1, m2)
    for mode in ("heatmap", "tint", "background", "recolor"):
        assert torch.equal(blend(x, m1, mode), blend(x.clone(), m2, mode))
    assert torch.equal(place_sticker(x, m1), place_sticker(x, m2))
    torch.manual_seed(1)  # no function draws random numbers: a different global seed changes nothing
    assert torch.equal(cartoon(x), cartoon(x.clone()))
    assert torch.equal(postprocess(token_map(model, x, "cam"), (64, 64)), m1)
