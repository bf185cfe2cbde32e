"""SUN's model pieces (specs/sun.md §2.2, §2.5, §5 "Meta-Baseline"): patch maps, teacher scores, stage-2 loss."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.losses.sun import patch_targets, sun_loss
from vitlab.methods.sun import (
    MetaBaseline,
    PatchClassifier,
    SUNConfig,
    check_teacher,
    patch_features,
    stage2_loss,
)
from vitlab.models import NoFeatureMapError


def _vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0, depth=2)


def test_patch_features_of_a_vit_and_a_cnn() -> None:
    x = torch.rand(2, 3, 32, 32)
    vit = _vit().eval()
    tokens, pooled = patch_features(vit, x)
    assert tokens.shape == (2, 16, 192) and pooled.shape == (2, 192)  # the class token is dropped
    assert torch.allclose(tokens, vit.forward_features(x)[:, 1:])
    cnn = timm.create_model("resnet10t", num_classes=0).eval()
    x = torch.rand(2, 3, 64, 64)
    tokens, pooled = patch_features(cnn, x)
    assert tokens.shape == (2, 4, 512)  # a 2 x 2 map at 64 px, row-major
    assert torch.allclose(tokens[:, 1], cnn.forward_features(x)[:, :, 0, 1])
    assert torch.allclose(pooled, cnn(x), atol=1e-6)  # timm's head with num_classes=0 is the average pool


def test_a_backbone_without_a_patch_map_is_a_clear_error() -> None:
    class Pooled(nn.Module):
        num_features = 8

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :8]

    with pytest.raises(NoFeatureMapError, match="Pooled.forward_features gives a 2-D \\(2, 8\\) output"):
        patch_features(Pooled(), torch.rand(2, 3, 4, 4))


def test_teacher_scores_are_the_global_classifier_at_every_position() -> None:
    torch.manual_seed(0)
    teacher = PatchClassifier(_vit(), num_classes=5).eval()
    x = torch.rand(2, 3, 32, 32)
    scores = teacher.patch_class_logits(x)
    tokens, pooled = patch_features(teacher.backbone, x)
    assert scores.shape == (2, 16, 5)
    for b in range(2):
        for j in range(16):
            assert torch.allclose(scores[b, j], teacher.head.weight @ tokens[b, j] + teacher.head.bias, atol=1e-5)
    # the mean of the patch scores is the global logit (a linear head commutes with the average pool)
    assert torch.allclose(scores.mean(1), teacher(x)["logits"], atol=1e-5)
    with pytest.raises(ValueError, match="the teacher has 5 classes, the base split has 64"):
        check_teacher(teacher, 64)


def test_stage2_loss_is_ce_plus_half_patch_loss_and_trains_only_the_student() -> None:
    torch.manual_seed(1)
    teacher = PatchClassifier(_vit(), num_classes=5)
    student = PatchClassifier(_vit(), num_classes=5, local_head=True)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    cfg = SUNConfig(top_k=2)
    out = stage2_loss(student, teacher, images, images, labels, cfg)
    targets = patch_targets(teacher.patch_class_logits(images), 2, 6)
    student_out = student(images)
    expected = sun_loss(student_out["logits"], labels, student_out["patch_logits"], targets)
    assert torch.allclose(out["loss"], expected["loss"], atol=1e-6)
    assert not teacher.training
    out["loss"].backward()
    assert student.local_head is not None and student.local_head.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert SUNConfig(use_config_weight=True).weight_for("cifar_fs") == 0.75
    assert SUNConfig().weight_for("cifar_fs") == 0.5


def test_meta_baseline_prototypes_against_a_loop_and_temperature_free_accuracy() -> None:
    torch.manual_seed(2)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    model = MetaBaseline(encoder)
    support, query = torch.randn(2, 3 * 2, 3, 2, 2), torch.randn(2, 5, 3, 2, 2)
    logits = model(support, query, ways=3)
    assert logits.shape == (2, 5, 3) and float(model.temperature.detach()) == 10.0
    for e in range(2):
        for w in range(3):
            proto = F.normalize(sum(encoder(support[e, w * 2 + s][None])[0] for s in range(2)) / 2, dim=0)
            for m in range(5):
                cos = torch.dot(F.normalize(encoder(query[e, m][None])[0], dim=0), proto)
                assert torch.allclose(logits[e, m, w], 10.0 * cos, atol=1e-5)
    with torch.no_grad():
        model.temperature.fill_(0.5)
    assert torch.equal(model(support, query, 3).argmax(-1), logits.argmax(-1))
