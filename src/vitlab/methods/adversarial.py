"""Adversarial training baselines: PGD-AT (Madry et al., 2018) and TRADES (Zhang et al., 2019), and the base class
SCORE builds on (SCORE itself, Pang et al., 2022, is in :mod:`vitlab.methods.score`).

The methods share :class:`AdversarialTraining` (the model, SCORE's generated-data mixing, the weight-EMA schedule and
the robust evaluation); :class:`TRADES` and :class:`PGDAT` each define their inner maximisation and loss. BN handling
during the attack is explicit (``attack_mode``):

* ``train_frozen_bn`` — SCORE's DDPM code: train mode, BN normalises with batch statistics, running buffers frozen;
* ``eval`` — SCORE's ``without_DDPM`` TRADES attack (``model.eval()``);
* ``train`` — SCORE's ``without_DDPM`` PGD-AT attack (train mode, the attack passes update BN buffers).

The outer forward passes always run in train mode with BN tracking on. Weight averaging is the engine's model EMA
(``ema.enabled``); with ``ema_schedule: score``, :meth:`AdversarialTraining.ema_decay_schedule` gives the engine
SCORE's per-update decay (:func:`~vitlab.engine.schedules.restarting_ema_decay`), which the engine's EMA uses in
place of ``ema.decay``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitlab.attacks.pgd import pgd, se_onehot_loss, trades_perturb
from vitlab.attacks.threat import check_norm, model_mode, parse_eps
from vitlab.config import ConfigError, RunConfig
from vitlab.engine.schedules import restarting_ema_decay
from vitlab.losses.robust import pgd_at_loss, probability_distance, trades_loss
from vitlab.methods.base import DataInfo, Method, Progress, register_method
from vitlab.methods.schemas.adversarial import (  # noqa: F401  (re-exported: the schemas live in a torch-free module)
    AdversarialConfig,
    PGDATConfig,
    TRADESConfig,
)
from vitlab.models.classifier import build_classifier


def load_extra_data(path: str) -> tuple[Tensor, Tensor]:
    """Images (N, C, H, W) float in [0, 1] and labels (N,) from an .npz with keys ``image`` and ``label``."""
    try:
        with np.load(path) as data:
            images, labels = data["image"], data["label"]
    except FileNotFoundError:
        raise ConfigError(f"method.extra_data: {path} not found (an .npz with keys image and label)") from None
    except KeyError as exc:
        raise ConfigError(f"method.extra_data: {path} lacks key {exc} (expected image and label)") from None
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    if x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.dim() != 4 or x.min() < 0 or x.max() > 1:
        raise ConfigError(f"method.extra_data: {path} images must be (N,H,W,C) uint8 or (N,C,H,W) floats in [0, 1]")
    return x.float().contiguous(), torch.from_numpy(np.asarray(labels)).long()


class AdversarialTraining(Method[AdversarialConfig]):
    """One classifier trained on adversarial examples; subclasses define :meth:`forward` (attack and loss)."""

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        mcfg = self.mcfg
        self.eps = parse_eps(mcfg.eps)
        self.step_size = parse_eps(mcfg.step_size)
        self.norm = check_norm(mcfg.norm)
        self.model = build_classifier(cfg.model, data.num_classes, data.channels, data.img_size, data.mean, data.std)
        if mcfg.ema_schedule == "score" and not cfg.ema.enabled:
            raise ConfigError("method.ema_schedule: score schedules the weight EMA's decay; it needs ema.enabled: true")
        self.extra: tuple[Tensor, Tensor] | None = None
        if mcfg.extra_fraction > 0 and mcfg.extra_data:
            self.extra = load_extra_data(mcfg.extra_data)

    def eval_model(self) -> nn.Module:
        return self.model

    def ema_decay_schedule(self, total_steps: int, steps_per_epoch: int) -> np.ndarray | None:
        """SCORE's restarting decay of the weight EMA (``ema_schedule: score``), else the constant ``ema.decay``."""
        if self.mcfg.ema_schedule == "score":
            return restarting_ema_decay(total_steps // steps_per_epoch, steps_per_epoch, self.cfg.ema.decay)
        return None

    # ---- pieces ---------------------------------------------------------------------------------------------------
    def mix_extra(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Append extra (generated) images so that they make ``extra_fraction`` of the batch (SCORE's semisup data).

        The extra images get the recipe's pad-and-crop and flip, drawn from the global generator.
        """
        if self.extra is None or not self.training:
            return x, y
        images, labels = self.extra
        n_extra = int(round(x.shape[0] * self.mcfg.extra_fraction / (1.0 - self.mcfg.extra_fraction)))
        idx = torch.randint(0, images.shape[0], (n_extra,))
        xe = images[idx].to(x.device, x.dtype)
        aug = self.cfg.data.aug
        if aug.random_crop_padding > 0:
            pad = aug.random_crop_padding
            padded = torch.nn.functional.pad(xe, (pad,) * 4)
            dy, dx = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            xe = padded[..., dy:dy + xe.shape[-2], dx:dx + xe.shape[-1]]
        if aug.hflip > 0:
            flip = torch.rand(n_extra) < aug.hflip
            xe[flip.to(x.device)] = xe[flip.to(x.device)].flip(-1)
        return torch.cat([x, xe]), torch.cat([y, labels[idx].to(y.device)])

    # ---- evaluation -----------------------------------------------------------------------------------------------
    def evaluate(self, loaders: Any, fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        """Clean top-1 (the base class's metrics) plus ``robust_pgd``: accuracy under PGD-``eval_pgd_steps`` (CE,
        step ε/4, seed 0) on the test split at the training budget."""
        metrics = super().evaluate(loaders, fabric, model)
        if self.mcfg.eval_pgd_steps > 0:
            from vitlab.evaluation.robust import robust_accuracy_pgd

            net = model if model is not None else self.eval_model()
            metrics["robust_pgd"] = robust_accuracy_pgd(net, loaders["test"], eps=self.eps, norm=self.norm,
                                                        steps=self.mcfg.eval_pgd_steps, seed=0)
        return metrics


@register_method("trades")
class TRADES(AdversarialTraining):
    """TRADES: CE (or SCORE's distance) on clean inputs + ``beta`` × D(p_adv, p_clean), x̃ maximising D."""

    config_class = TRADESConfig

    def perturb(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The inner maximisation: x̃ and the detached clean softmax it was built against."""
        m = self.mcfg
        with torch.no_grad(), model_mode(self.model, m.attack_mode):
            p_clean = self.model(x).softmax(dim=1)
        distance = _attack_distance(m.distance)
        x_adv = trades_perturb(self.model, x, p_clean, distance, eps=self.eps, norm=self.norm, steps=m.steps,
                               step_size=self.step_size if self.norm == "Linf" else None, start=m.attack_start,
                               mode=m.attack_mode)
        return x_adv, p_clean

    def forward(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        x, y = self.mix_extra(batch["image"], batch["label"])
        m = self.mcfg
        x_adv, _ = self.perturb(x)
        # two separate outer passes, as in the reference: BN statistics see the clean and the adversarial batch
        logits_clean = self.model(x)
        logits_adv = self.model(x_adv)
        loss, terms = trades_loss(logits_clean, logits_adv, y, m.beta, distance=m.distance,
                                  label_smoothing=m.label_smoothing, clip_value=m.clip_value, clip_loss=m.clip_loss,
                                  clip_clean=m.clip_clean)
        with torch.no_grad():
            out = {"natural": terms["natural"], "robust": terms["robust"],
                   "acc": (logits_clean.argmax(1) == y).float().mean(),
                   "adv_acc": (logits_adv.argmax(1) == y).float().mean()}
        out["loss"] = loss
        return out


@register_method("pgd_at")
class PGDAT(AdversarialTraining):
    """PGD-AT: the loss (CE, or a distance to the one-hot label) on PGD examples only."""

    config_class = PGDATConfig

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        m = self.mcfg
        loss: Any = "ce" if m.distance == "kl" else (se_onehot_loss if m.distance == "se" else
                                                     _onehot_distance(m.distance))
        return pgd(self.model, x, y, eps=self.eps, norm=self.norm, steps=m.steps, step_size=self.step_size,
                   loss=loss, random_init=True, mode=m.attack_mode, check_inputs=False)

    def forward(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        x, y = self.mix_extra(batch["image"], batch["label"])
        m = self.mcfg
        logits_adv = self.model(self.perturb(x, y))
        loss = pgd_at_loss(logits_adv, y, distance=m.distance, label_smoothing=m.label_smoothing,
                           clip_loss=m.clip_loss)
        with torch.no_grad():
            out = {"adv_acc": (logits_adv.argmax(1) == y).float().mean()}
        out["loss"] = loss
        return out


def _attack_distance(name: str) -> Any:
    """The inner-maximisation objective D(p_adv, p_clean) -> (B,) for a training distance."""
    return lambda p_adv, p_clean: probability_distance(p_adv, p_clean, name)


def _onehot_distance(name: str) -> Any:
    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        target = torch.nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)
        return probability_distance(logits.softmax(dim=1), target, name)

    return loss
