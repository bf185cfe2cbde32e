"""HAT (spec hat.md §5): δ lattice, units, gradient accumulation, late epochs, symmetric KL, KD path, mode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.config import ConfigError, load_config
from vitlab.losses.distillation import deit_distillation_loss
from vitlab.methods.base import DataInfo, Progress, build_method
from vitlab.methods.hat import (
    hat_accumulate,
    input_scale,
    pass_weights,
    soft_target_cross_entropy,
    symmetric_kl,
)
from vitlab.models.classifier import ImageClassifier

EPS, ALPHA = 2 / 255, 1 / 255


def tiny_classifier(std: float = 0.5, seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    return ImageClassifier(net, (0.5,) * 3, (std,) * 3)


def batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    target = F.softmax(torch.randn(n, 5, generator=g), dim=-1)
    return x, target


def naive_kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return sum(float(p[i]) * math.log(float(p[i]) / float(q[i])) for i in range(len(p)))


def test_symmetric_kl_matches_loop_is_zero_and_symmetric() -> None:
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    pa, pb = a.softmax(-1), b.softmax(-1)
    expected = sum(0.5 * (naive_kl(pb[i], pa[i]) + naive_kl(pa[i], pb[i])) for i in range(3)) / 3
    assert symmetric_kl(a, pb).item() == pytest.approx(expected, rel=1e-5)
    assert symmetric_kl(a, pb).item() == pytest.approx(symmetric_kl(b, pa).item(), rel=1e-5)
    assert symmetric_kl(a, pa).abs().item() < 1e-6


def test_soft_target_ce_matches_a_loop() -> None:
    logits = torch.randn(3, 4)
    target = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 3)
    ce = sum(-sum(float(target[b, k]) * math.log(float(logits[b].softmax(0)[k])) for k in range(4)) for b in range(3))
    assert soft_target_cross_entropy(logits, target).item() == pytest.approx(ce / 3, rel=1e-5)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_kd_pass_mixes_the_distillation_token_loss_with_deit_formula(kind: str) -> None:
    """One pass (δ = 0): ce_0 = (1 − α)·SoftCE(cls, y) + α·DeiT(dist, teacher(x)), the KL on the class head only."""

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls, self.dist = nn.Linear(3 * 8 * 8, 5), nn.Linear(3 * 8 * 8, 5)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.cls(x.flatten(1)), self.dist(x.flatten(1))

    torch.manual_seed(0)
    student, teacher = TwoHeads(), nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    x, target = batch()
    step = hat_accumulate(student, x, target, iters=1, eps=EPS, step_size=ALPHA, ce_weight=3.0, kl_weight=0.01,
                          scale=torch.ones(3), backward=lambda loss: loss.backward(), teacher=teacher,
                          distill_type=kind, distill_alpha=0.3, distill_tau=2.0)
    with torch.no_grad():
        cls, dist = student(x)
        distill = deit_distillation_loss(dist, teacher(x), kind, 2.0)
        ce = 0.7 * soft_target_cross_entropy(cls, target) + 0.3 * distill
    assert step.distill[0].item() == pytest.approx(distill.item(), rel=1e-6)
    assert step.ce[0].item() == pytest.approx(ce.item(), rel=1e-6)
    assert step.losses[0].item() == pytest.approx(ce.item() + 0.01 * step.kl[0].item(), rel=1e-6)


def test_pass_weights_are_the_spec_values() -> None:
    assert pass_weights(3, 3.0, 0.01) == [(1.0, 0.01), (1.5, 0.005), (1.5, 0.005)]
    assert pass_weights(1, 3.0, 0.01) == [(1.0, 0.01)]


def test_delta_lattice_and_pixel_units_without_clamp() -> None:
    model = tiny_classifier(std=0.5).train()
    x, target = batch()
    x[0, :, 0, 0] = 1.0  # a saturated pixel: x + δ may leave [0, 1] (no clamp by default)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    scale = input_scale(model, "normalized", 3)
    assert torch.allclose(scale, torch.full((3,), 0.5))
    step = hat_accumulate(model, x, target, iters=3, eps=EPS, step_size=ALPHA, ce_weight=3.0, kl_weight=0.01,
                          scale=scale, backward=lambda loss: loss.backward())
    d0, d1, d2 = step.deltas
    assert d0.abs().max() == 0  # no random start
    units1, units2 = d1 / ALPHA, d2 / ALPHA
    assert torch.allclose(units1, units1.round(), atol=1e-4) and set(units1.round().unique().tolist()) <= {-1, 0, 1}
    assert torch.allclose(units2, units2.round(), atol=1e-4) and units2.abs().max() <= 2 + 1e-4
    assert (units2.abs().round() == 2).float().mean() > 0.5  # in practice {0, ±2/255}
    # the model saw x + σ·δ: with σ = 0.5 the pixel perturbation is bounded by 1/255; nothing clamped to [0, 1]
    pixel = seen[3] - x  # passes: clean (no grad), k = 0, 1, 2
    assert pixel.abs().max() <= 1 / 255 + 1e-6 and torch.allclose(pixel, 0.5 * d2, atol=1e-6)
    assert max(float(s.max()) for s in seen[2:]) > 1.0


def naive_hat(model: nn.Module, x: torch.Tensor, target: torch.Tensor, iters: int, sigma: float
              ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Spec §2.2 written out: δ_k by explicit input gradients, then the gradient of the summed objective."""
    params = list(model.parameters())
    with torch.no_grad():
        p_clean = model(x).softmax(-1)
    deltas, delta = [], torch.zeros_like(x)
    objective = torch.zeros(())
    for k in range(iters):
        d = delta.clone().requires_grad_(True)
        logits = model(x + sigma * d)
        ce = -(target * logits.log_softmax(-1)).sum(-1).mean()
        p = logits.softmax(-1)
        kl = 0.5 * ((p_clean * (p_clean.log() - p.log())).sum(-1) + (p * (p.log() - p_clean.log())).sum(-1)).mean()
        loss_k = ce + 0.01 * kl if k == 0 else (3.0 * ce + 0.01 * kl) / (iters - 1)
        (g,) = torch.autograd.grad(loss_k, [d], retain_graph=True)
        deltas.append(delta.clone())
        objective = objective + loss_k
        delta = (delta + ALPHA * g.sign()).clamp(-EPS, EPS)
    grads = torch.autograd.grad(objective, params)
    return deltas, list(grads)


def test_gradient_accumulation_equals_gradient_of_summed_objective() -> None:
    model = tiny_classifier().train()  # no dropout or drop path: deterministic
    x, target = batch()
    step = hat_accumulate(model, x, target, iters=3, eps=EPS, step_size=ALPHA, ce_weight=3.0, kl_weight=0.01,
                          scale=torch.full((3,), 0.5), backward=lambda loss: loss.backward())
    accumulated = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    deltas, expected = naive_hat(model, x, target, 3, 0.5)
    for got, want in zip(step.deltas, deltas):
        assert torch.allclose(got, want, atol=1e-7)
    for got, want in zip(accumulated, expected):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    # averaging the passes (a common mistake) would give a different gradient
    assert not torch.allclose(accumulated[-1], expected[-1] / 3, rtol=1e-3)


def tiny_hat_method(extra: list[str] | None = None, drop_path: float = 0.0):
    cfg = load_config(None, ["method.name=hat", "model.name=vit_tiny_patch16_224", "model.kwargs.img_size=8",
                             "model.kwargs.patch_size=4", "model.kwargs.embed_dim=16", "model.kwargs.depth=2",
                             "model.kwargs.num_heads=2", f"model.drop_path_rate={drop_path}", "data.img_size=8",
                             "method.adv_epochs=2"] + (extra or []))
    info = DataInfo(num_classes=5, channels=3, img_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.manual_seed(0)
    return build_method(cfg, info).train()


def progress(epoch: int) -> Progress:
    return Progress(step=0, epoch=epoch, total_steps=10, steps_per_epoch=5, values={"lr": 1e-3, "weight_decay": 0.05})


def test_training_step_hat_phase_then_late_epochs(step_helper) -> None:
    method = tiny_hat_method()
    x = torch.rand(4, 3, 8, 8)
    data = {"image": x, "label": torch.tensor([0, 1, 2, 3])}
    forwards: list[int] = []
    method.model.register_forward_hook(lambda *_: forwards.append(1))
    helper = step_helper(method)
    out = method.training_step(data, progress(1), helper)
    assert (helper.backwards, helper.steps, len(forwards)) == (3, 1, 4)  # 1 no-grad + K passes, one optimizer step
    assert "ce_adv" in out and method.model.training
    helper, forwards[:] = step_helper(method), []
    out = method.training_step(data, progress(2), helper)  # epoch >= adv_epochs: k = 0 only
    assert (helper.backwards, helper.steps, len(forwards)) == (1, 1, 2)
    assert out["loss"].item() == pytest.approx(out["ce_clean"].item() + 0.01 * out["kl"].item(), rel=1e-6)
    assert method.model.training


def test_clean_pass_is_in_train_mode_so_kl_is_nonzero_with_drop_path(step_helper) -> None:
    method = tiny_hat_method(drop_path=0.5)
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        a, b = method.model(x), method.model(x)
    assert not torch.allclose(a, b)
    out = method.training_step({"image": x, "label": torch.tensor([0, 1, 2, 3])}, progress(5), step_helper(method))
    assert out["kl"].item() > 0


def test_kd_path_teacher_sees_the_perturbed_input_and_one_step(step_helper) -> None:
    method = tiny_hat_method(["method.distill_type=soft"])
    teacher_inputs: list[torch.Tensor] = []
    student_inputs: list[torch.Tensor] = []
    teacher_net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    teacher = ImageClassifier(teacher_net, (0.5,) * 3, (0.5,) * 3).eval()
    teacher.register_forward_pre_hook(lambda _m, args: teacher_inputs.append(args[0].detach().clone()))
    method.model.register_forward_pre_hook(lambda _m, args: student_inputs.append(args[0].detach().clone()))
    method.teacher = teacher
    helper = step_helper(method)
    out = method.training_step({"image": torch.rand(4, 3, 8, 8), "label": torch.tensor([0, 1, 2, 3])},
                               progress(0), helper)
    assert helper.steps == 1 and helper.backwards == 3 and "distill" in out
    assert len(teacher_inputs) == 3
    for t_in, s_in in zip(teacher_inputs, student_inputs[1:]):
        assert torch.equal(t_in, s_in)
    assert (teacher_inputs[2] - student_inputs[0]).abs().max() > 0  # x + δ, not x


def test_config_errors_name_the_key() -> None:
    for override, key in (("method.adv_iters=0", "method.adv_iters"), ("method.eps_space=pixels", "method.eps_space"),
                          ("method.adv_eps=abc", "method.adv_eps"), ("method.distill_type=x", "method.distill_type"),
                          ("method.delta_filter=lowpass", "method.delta_filter")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, ["method.name=hat", override])


def test_pixel_space_and_highpass_delta_extension(step_helper) -> None:
    method = tiny_hat_method(["method.eps_space=pixel", "method.delta_filter=highpass",
                              "method.delta_filter_radius=1", "method.clamp_to_image=true"])
    from vitlab.analysis.frequency import lowpass

    assert torch.equal(method.delta_scale, torch.ones(3))
    seen: list[torch.Tensor] = []
    method.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    x = 0.1 + 0.8 * torch.rand(4, 3, 8, 8)
    x[0, :, 0, 0] = 1.0  # a saturated pixel: without the clamp the model sees 1.0077 here (measured)
    method.training_step({"image": x, "label": torch.tensor([0, 1, 2, 3])}, progress(0), step_helper(method))
    assert len(seen) == 4  # clean pass, then k = 0, 1, 2
    assert all(float(s.min()) >= 0.0 and float(s.max()) <= 1.0 for s in seen)
    delta = seen[2][1:] - x[1:]  # δ_1 of the unsaturated images: pixel units, nothing clamped
    assert 0 < float(delta.abs().max()) <= EPS + 1e-6
    assert lowpass(delta, 1.0).abs().max() < 1e-6  # high-passed: nothing within radius 1 of the DC bin


def test_vit_parameter_counts_match_the_readme() -> None:
    import timm

    with torch.device("meta"):
        counts = [sum(p.numel() for p in timm.create_model(f"vit_{s}_patch16_224").parameters())
                  for s in ("tiny", "small", "base")]
    assert counts == [5_717_416, 22_050_664, 86_567_656]


def test_eps_above_two_steps_never_binds_with_three_passes() -> None:
    """With K = 3 δ reaches at most 2α, so ε = 4/255 with α = 1/255 gives the same δ as ε = 2/255 (docs/hat.md)."""
    x, target = batch()
    runs = []
    for eps in (2 / 255, 4 / 255):
        model = tiny_classifier().train()
        step = hat_accumulate(model, x, target, iters=3, eps=eps, step_size=ALPHA, ce_weight=3.0, kl_weight=0.01,
                              scale=torch.full((3,), 0.5), backward=lambda loss: loss.backward())
        runs.append(step.deltas)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
