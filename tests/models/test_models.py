"""Registry-wide model contract: every tiny ``test_*`` vitlab model (any family, image or video) is built through
timm and checked for forward shape, finiteness, a gradient on every parameter, classifier reset, feature width and
(for families that declare ``feature_info``) ``features_only`` extraction."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import vitlab  # noqa: F401  (registers the models)
from vitlab.models import list_vitlab_models

TEST_MODELS = list_vitlab_models("test_*")
BATCH = 2


def pretrained_cfg(model: nn.Module) -> dict:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    assert cfg and "input_size" in cfg and "num_classes" in cfg, (
        f"{type(model).__name__} has no pretrained_cfg with input_size and num_classes (give its registered "
        "variants a default_cfgs entry)"
    )
    return cfg


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs)


def example_input(model: nn.Module, seed: int = 0) -> torch.Tensor:
    """(B, *input_size): (B, C, H, W) for image models, (B, C, T, H, W) for video models."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, *pretrained_cfg(model)["input_size"], generator=generator)


def declares_feature_info(name: str) -> bool:
    return bool(getattr(build(name), "feature_info", None))


FEATURE_MODELS = [name for name in TEST_MODELS if declares_feature_info(name)]


def test_registry_lists_tiny_models() -> None:
    assert "test_iformer" in TEST_MODELS
    assert all(name in timm.list_models() for name in TEST_MODELS)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_default_cfg(name: str) -> None:
    model = build(name)
    cfg = pretrained_cfg(model)
    assert cfg["num_classes"] == model.num_classes
    assert len(cfg["input_size"]) in (3, 4)  # (C, H, W) or (C, T, H, W)
    for key in ("mean", "std", "first_conv", "classifier"):
        assert key in cfg, f"{name}: default_cfg lacks {key!r}"
    assert isinstance(model.get_submodule(cfg["classifier"]), nn.Linear)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_forward_shape_and_finite(name: str) -> None:
    model = build(name).eval()
    with torch.no_grad():
        out = model(example_input(model))
    assert out.shape == (BATCH, pretrained_cfg(model)["num_classes"])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", TEST_MODELS)
def test_gradient_reaches_every_parameter(name: str) -> None:
    model = build(name).train()
    out = model(example_input(model))
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters without a gradient: {no_grad}"
    not_finite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not not_finite, f"{name}: non-finite gradients: {not_finite}"


@pytest.mark.parametrize("name", TEST_MODELS)
def test_reset_classifier(name: str) -> None:
    model = build(name).eval()
    x = example_input(model)
    model.reset_classifier(0)
    with torch.no_grad():
        pooled = model(x)
    assert pooled.shape == (BATCH, model.num_features)
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(x).shape == (BATCH, 7)
    assert model.num_classes == 7


@pytest.mark.parametrize("name", TEST_MODELS)
def test_forward_features_width(name: str) -> None:
    model = build(name).eval()
    x = example_input(model)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    # channels-first (B, C, ...) or channels-last / tokens (B, ..., C)
    assert model.num_features in (features.shape[1], features.shape[-1])
    assert pre_logits.shape == (BATCH, model.num_features)
    torch.testing.assert_close(logits, model(x))


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_features_only(name: str) -> None:
    classifier = build(name)
    info = classifier.feature_info
    extractor = build(name, features_only=True).eval()
    x = example_input(classifier)
    with torch.no_grad():
        features = extractor(x)
    assert len(features) == len(info)
    assert extractor.feature_info.channels() == [stage["num_chs"] for stage in info]
    for feature, stage in zip(features, info):
        assert feature.shape[0] == BATCH and feature.shape[1] == stage["num_chs"]
        # spatial stride: the last dim is the width in both (B, C, H, W) and (B, C, T, H, W) maps
        assert x.shape[-1] // feature.shape[-1] == stage["reduction"]
        assert torch.isfinite(feature).all()
