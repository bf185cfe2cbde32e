"""The frame-averaged 2-D baseline: per-frame logits averaged over time, blind to frame order."""

from __future__ import annotations

import pytest
import timm
import torch

import vitlab  # noqa: F401  (registers the models)
from vitlab.models.frame_average import FrameAverage


@pytest.fixture(scope="module")
def model() -> FrameAverage:
    torch.manual_seed(0)
    return timm.create_model("frame_avg_vit", num_classes=4, video_size=(8, 32, 32)).eval()


def test_logits_are_the_mean_of_per_frame_logits_of_the_2d_model(model):
    clip = torch.rand(2, 3, 5, 32, 32)
    with torch.no_grad():
        expected = torch.stack([
            torch.stack([model.backbone(clip[b : b + 1, :, t])[0] for t in range(5)]).mean(0) for b in range(2)])
        got = model(clip)
    assert got.shape == (2, 4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_frame_order_does_not_matter_and_the_head_of_mean_features_is_the_mean_logit(model):
    clip = torch.rand(2, 3, 8, 32, 32)
    with torch.no_grad():
        logits = model(clip)
        shuffled = model(clip[:, :, torch.randperm(8)])
        reversed_ = model(clip.flip(2))
        features = model.forward_head(model.forward_features(clip), pre_logits=True)
        head_of_mean = model.get_classifier()(features)
    torch.testing.assert_close(shuffled, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reversed_, logits, rtol=1e-4, atol=1e-5)
    assert features.shape == (2, model.num_features)
    torch.testing.assert_close(head_of_mean, logits, rtol=1e-4, atol=1e-5)


def test_contract_size_gradients_and_reset():
    model = timm.create_model("frame_avg_vit", num_classes=4)
    assert model.pretrained_cfg["input_size"] == (3, 8, 32, 32)
    assert 200_000 < sum(p.numel() for p in model.parameters()) < 230_000
    model(torch.rand(2, 3, 8, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.reset_classifier(7)
    assert model(torch.rand(1, 3, 2, 32, 32)).shape == (1, 7) and model.num_classes == 7
    assert all(n.startswith("backbone.") for n in model.no_weight_decay())
    generic = timm.create_model("frame_avg", backbone="resnet18", num_classes=3)
    assert generic(torch.rand(1, 3, 2, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="clips"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="video_size"):
        timm.create_model("frame_avg_vit", video_size=(8, 32, 16))
