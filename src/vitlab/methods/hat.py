"""HAT: high-frequency adversarial training (Bai et al., 2022, "Improving Vision Transformers by Revisiting
High-frequency Components", ECCV), for any classifier, with the DeiT-style distillation variant.

One training step (vitlab spec ``hat.md`` §2.2, the official ``train_one_epoch``), x the batch, y soft targets:

1. δ = 0 (no random start); p_clean = softmax(model(x)) in train mode, without gradient.
2. for k = 0 … K−1: logits_k = model(x + δ); ce_k = SoftTargetCE(logits_k, y);
   kl_k = ½[KL(p_clean ‖ p_k) + KL(p_k ‖ p_clean)];
   loss_k = ce_0 + w_kl·kl_0 (k = 0) or (w_ce·ce_k + w_kl·kl_k)/(K − 1) (k ≥ 1);
   backward(loss_k) — parameter gradients accumulate over the K passes —
   and δ ← clamp(δ + α·sign(∇_δ loss_k), −ε, ε).
3. one optimizer step. From epoch ``adv_epochs`` on, K = 1 (clean CE + w_kl·symmetric KL of two stochastic passes).

Units (spec §2.3): the official δ is added to the *normalised* input, so ε and α are in normalised units. vitlab
models take [0, 1] images and normalise inside, and model(norm(x) + δ) = model(norm(x + σ ⊙ δ)): δ is kept in
normalised units and the model sees x + σ_c·δ, without a clamp to [0, 1] (both flags can change that).
No frequency filter is applied to δ (the official code has none); ``delta_filter: highpass`` is a labelled extension.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import Tensor, nn

from vitlab.config import ConfigError, RunConfig
from vitlab.losses.distillation import deit_total_loss
from vitlab.methods.base import DataInfo, Method, OptimizerBuilder, Progress, StepHelper, register_method
from vitlab.methods.schemas.hat import HATConfig
from vitlab.models.classifier import build_classifier

# ---- loss terms --------------------------------------------------------------------------------------------------
#: timm's soft-target CE, mean_b Σ_k −target_bk · log softmax(logits)_bk. logits, target: (B, K) -> scalar
soft_target_cross_entropy = SoftTargetCrossEntropy()


def symmetric_kl(logits: Tensor, p_clean: Tensor) -> Tensor:
    """½[KL(p_clean ‖ p) + KL(p ‖ p_clean)], summed over classes, mean over the batch (spec §2.2).

    logits: (B, K) of the current pass; p_clean: (B, K) probabilities of the clean pass (detached by the caller).
    """
    log_p = F.log_softmax(logits, dim=-1)
    p = log_p.exp()
    log_clean = torch.log(p_clean.clamp_min(1e-38))
    # F.kl_div(input=log q, target=p) = Σ p (log p − log q); p_clean entries that are exactly 0 contribute 0
    forward = F.kl_div(log_p, p_clean, reduction="none").sum(dim=-1)  # KL(p_clean ‖ p)
    backward = F.kl_div(log_clean, p, reduction="none").sum(dim=-1)  # KL(p ‖ p_clean)
    return 0.5 * (forward + backward).mean()


def pass_weights(iters: int, ce_weight: float, kl_weight: float) -> list[tuple[float, float]]:
    """(CE weight, KL weight) of each of the K passes: (1, w_kl), then (w_ce/(K−1), w_kl/(K−1)) (spec §2.2)."""
    if iters < 1:
        raise ConfigError(f"HAT: adv_iters {iters} must be >= 1")
    if iters == 1:
        return [(1.0, kl_weight)]
    return [(1.0, kl_weight)] + [(ce_weight / (iters - 1), kl_weight / (iters - 1))] * (iters - 1)


def split_heads(output: Tensor | tuple[Tensor, ...] | list[Tensor]) -> tuple[Tensor, Tensor | None]:
    """(class-token logits, distillation-token logits or None) of a student's output."""
    if isinstance(output, (tuple, list)):
        return output[0], (output[1] if len(output) > 1 else None)
    return output, None


def input_scale(model: nn.Module, eps_space: str, channels: int) -> Tensor:
    """Per-channel factor σ_c from δ's units to [0, 1] pixels: the model's normalisation std, or 1. -> (C,)."""
    std = getattr(getattr(model, "normalize", None), "std", None)
    if eps_space == "pixel" or not torch.is_tensor(std):
        return torch.ones(channels)
    return std.detach().float().cpu().clone()


@dataclass
class HATStep:
    """What one HAT step did: per-pass loss terms (detached) and the δ each pass saw (normalised units)."""

    ce: list[Tensor]
    kl: list[Tensor]
    losses: list[Tensor]
    deltas: list[Tensor]
    distill: list[Tensor]


def hat_accumulate(model: nn.Module, x: Tensor, target: Tensor, *, iters: int, eps: float, step_size: float,
                   ce_weight: float, kl_weight: float, scale: Tensor, backward: Callable[[Tensor], None],
                   clamp_to_image: bool = False, delta_filter: Callable[[Tensor], Tensor] | None = None,
                   teacher: nn.Module | None = None, distill_type: str = "none", distill_alpha: float = 0.5,
                   distill_tau: float = 1.0, record_deltas: bool = True) -> HATStep:
    """The HAT loop of spec §2.2 (and §2.4 with a teacher): K backward passes, parameter gradients accumulated.

    x: (B, C, H, W) images in [0, 1]; target: (B, K) soft targets; scale: (C,) σ_c (δ's unit in pixels);
    eps, step_size: ε and α in δ's units; backward(loss) back-propagates (the engine's helper). No optimizer step
    and no zero_grad here: the caller steps once. The model stays in the mode it is in (train mode in training).
    ``record_deltas`` keeps a copy of the δ of every pass in the result (tests and analysis; training skips it).
    """
    view = (1, -1) + (1,) * (x.dim() - 2)
    sigma = scale.to(device=x.device, dtype=x.dtype).view(view)
    with torch.no_grad():
        p_clean = F.softmax(split_heads(model(x))[0].float(), dim=-1)
    delta = torch.zeros_like(x)
    step = HATStep([], [], [], [], [])
    for w_ce, w_kl in pass_weights(iters, ce_weight, kl_weight):
        delta.requires_grad_(True)
        x_adv = x + sigma * delta
        if clamp_to_image:
            x_adv = x_adv.clamp(0.0, 1.0)
        logits, logits_dist = split_heads(model(x_adv))
        ce = soft_target_cross_entropy(logits, target)
        if teacher is not None and distill_type != "none":
            with torch.no_grad():
                teacher_logits = split_heads(teacher(x_adv.detach()))[0]  # the teacher sees x + δ too (spec §2.4)
            ce, distill = deit_total_loss(ce, logits_dist if logits_dist is not None else logits, teacher_logits,
                                          distill_type, distill_alpha, distill_tau)
            step.distill.append(distill.detach())
        kl = symmetric_kl(logits.float(), p_clean)
        loss = w_ce * ce + w_kl * kl
        backward(loss)
        step.ce.append(ce.detach())
        step.kl.append(kl.detach())
        step.losses.append(loss.detach())
        if record_deltas:
            step.deltas.append(delta.detach().clone())
        if delta.grad is None:
            raise RuntimeError("HAT: the loss has no gradient with respect to the input perturbation")
        with torch.no_grad():
            # the last update is computed but never used, as in the official loop (it costs nothing extra)
            updated = delta + step_size * delta.grad.sign()
            if delta_filter is not None:
                updated = delta_filter(updated)
            delta = updated.clamp(-eps, eps).detach()
    return step


# ---- the method --------------------------------------------------------------------------------------------------
@register_method("hat")
class HAT(Method[HATConfig]):
    """HAT training of any classifier; the KD variant when ``method.teacher_ckpt`` is set."""

    automatic_optimization = False

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        from vitlab.attacks.threat import parse_eps
        from vitlab.data import build_mixup

        mcfg = self.mcfg
        self.model = build_classifier(cfg.model, data.num_classes, data.channels, data.img_size, data.mean, data.std)
        self.mixup = build_mixup(cfg.data.aug, data.num_classes, mcfg.label_smoothing)
        self.eps, self.step_size = parse_eps(mcfg.adv_eps), parse_eps(mcfg.adv_lr)
        self.register_buffer("delta_scale", input_scale(self.model, mcfg.eps_space, data.channels), persistent=False)
        self.teacher: nn.Module | None = None
        if mcfg.teacher_ckpt:
            from vitlab.engine.checkpoint import load_frozen_teacher

            self.teacher = load_frozen_teacher(mcfg.teacher_ckpt)
        set_distilled = getattr(self.model.model, "set_distilled_training", None)
        if self.teacher is not None and callable(set_distilled):
            set_distilled(True)  # DeiT distilled models return (cls, dist) logits in train mode

    def train(self, mode: bool = True) -> HAT:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen teacher: BN statistics and dropout stay in eval mode
        return self

    def eval_model(self) -> nn.Module:
        return self.model

    def configure_optimizers(self, build_optimizer: OptimizerBuilder) -> dict[str, torch.optim.Optimizer]:
        return {"main": build_optimizer(self.param_groups())}

    def scale_tensor(self) -> Tensor:
        """σ_c per channel (C,): δ's unit in [0, 1] pixels."""
        scale = self.delta_scale
        assert isinstance(scale, Tensor)
        return scale

    def iters_at(self, epoch: int) -> int:
        """K for this epoch: ``adv_iters`` before ``adv_epochs``, 1 after it (spec §2.2 "Late epochs")."""
        if self.mcfg.adv_epochs is not None and epoch >= self.mcfg.adv_epochs:
            return 1
        return self.mcfg.adv_iters

    def soft_targets(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mixup/cutmix images and targets when on, else label-smoothed one-hot targets. -> x, (B, K)."""
        if self.mixup is not None:
            return self.mixup(x, y)
        k, ls = self.data.num_classes, self.mcfg.label_smoothing
        return x, F.one_hot(y, k).to(x.dtype) * (1.0 - ls) + ls / k

    def _delta_filter(self) -> Callable[[Tensor], Tensor] | None:
        if self.mcfg.delta_filter == "none":
            return None
        from vitlab.analysis.frequency import highpass

        radius = self.mcfg.delta_filter_radius
        return lambda d: highpass(d, radius)

    def training_step(self, batch: dict[str, Tensor], progress: Progress, helper: StepHelper) -> dict[str, Tensor]:
        optimizer = helper.optimizers["main"]
        helper.set_lr(optimizer, progress["lr"], progress["weight_decay"])
        x, target = self.soft_targets(batch["image"], batch["label"])
        iters = self.iters_at(progress.epoch)
        step = hat_accumulate(self.model, x, target, iters=iters, eps=self.eps, step_size=self.step_size,
                              ce_weight=self.mcfg.adv_ce_weight, kl_weight=self.mcfg.adv_kl_weight,
                              scale=self.scale_tensor(), backward=helper.backward,
                              clamp_to_image=self.mcfg.clamp_to_image, delta_filter=self._delta_filter(),
                              teacher=self.teacher, distill_type=self.mcfg.distill_type,
                              distill_alpha=self.mcfg.distill_alpha, distill_tau=self.mcfg.distill_tau,
                              record_deltas=False)
        helper.step(optimizer)
        out = {"loss": torch.stack(step.losses).sum(), "ce_clean": step.ce[0], "kl": torch.stack(step.kl).mean(),
               "adv_iters": torch.tensor(float(iters))}
        if iters > 1:
            out["ce_adv"] = torch.stack(step.ce[1:]).mean()
        if step.distill:
            out["distill"] = torch.stack(step.distill).mean()
        return out

    def evaluate(self, loaders: Mapping[str, Any], fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        metrics = super().evaluate(loaders, fabric, model)
        if self.mcfg.eval_pgd_eps:
            from vitlab.attacks.threat import parse_eps
            from vitlab.evaluation.robust import robust_accuracy_pgd

            target = model if model is not None else self.eval_model()
            for text in self.mcfg.eval_pgd_eps:
                eps = parse_eps(text)
                key = f"pgd10_{round(eps * 255, 3):g}_255"
                metrics[key] = robust_accuracy_pgd(target, loaders["test"], eps=eps, steps=10, seed=0)
        return metrics
