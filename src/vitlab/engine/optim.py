"""Optimizers, their per-step schedules, and the step helpers manual-optimisation methods step through.

:func:`build_optimizer` is the one optimizer builder: the engine builds automatic methods' optimizer with it and hands
it (bound to the run's config) to :meth:`~vitlab.methods.base.Method.configure_optimizers` of manual ones.
:class:`FabricStepHelper` is what the engine lends a manual method (precision, gradient scaling and DDP through
Fabric); :class:`PlainStepHelper` is the same contract without Fabric, for benchmarks and tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitlab.config import RunConfig
from vitlab.engine.schedules import constant_schedule, cosine_schedule, step_schedule


def build_optimizer(cfg: RunConfig, groups: Iterable[Any]) -> torch.optim.Optimizer:
    """The ``optim`` section's optimizer (SGD, AdamW, or Adam with L2) over parameter groups (or parameters)."""
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, betas=(o.betas[0], o.betas[1]), weight_decay=o.weight_decay)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.betas[0], o.betas[1]), weight_decay=o.weight_decay)


def build_schedules(cfg: RunConfig, steps_per_epoch: int) -> dict[str, np.ndarray]:
    """Learning-rate and weight-decay values for every optimizer step of the run."""
    o, epochs = cfg.optim, cfg.train.epochs
    if o.schedule == "cosine":
        lr = cosine_schedule(o.lr, o.min_lr, epochs, steps_per_epoch, o.warmup_epochs, o.warmup_lr)
    elif o.schedule == "step":
        lr = step_schedule(o.lr, epochs, steps_per_epoch, o.step_milestones, o.step_gamma, o.warmup_epochs,
                           o.warmup_lr)
    else:
        lr = constant_schedule(o.lr, epochs, steps_per_epoch, o.warmup_epochs, o.warmup_lr)
    if o.weight_decay_end is not None:
        wd = cosine_schedule(o.weight_decay, o.weight_decay_end, epochs, steps_per_epoch)
    else:
        wd = constant_schedule(o.weight_decay, epochs, steps_per_epoch)
    return {"lr": lr, "weight_decay": wd}


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None) -> None:
    """This step's lr (× each group's ``lr_scale``) and weight decay (groups with ``apply_wd``, the default)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and group.get("apply_wd", True):
            group["weight_decay"] = weight_decay


class PlainStepHelper:
    """The :class:`~vitlab.methods.base.StepHelper` contract in plain PyTorch: no precision plugin, no DDP.

    ``optimizers`` are the method's own (from ``configure_optimizers``); ``clip_grad`` clips each stepped
    optimizer's parameters to that global norm, as the engine's helper does.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer] | None = None,
                 clip_grad: float | None = None) -> None:
        self.optimizers = dict(optimizers or {})
        self.clip_grad = clip_grad

    def backward(self, loss: Tensor, model: nn.Module | None = None) -> None:
        loss.backward()

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are never scaled here; nothing to do."""

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], self.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def set_lr(self, optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
        apply_schedule(optimizer, lr, weight_decay)


class FabricStepHelper:
    """Backward and step for manual-optimisation methods, through Fabric (precision, gradient scaling, DDP).

    ``optimizers`` are the Fabric-wrapped optimizers, by the names ``configure_optimizers`` gave them; a method
    steps those. Under ``16-mixed`` the loss is scaled in :meth:`backward`, gradients are unscaled before any
    clipping (:meth:`unscale_gradients` for a method's own clipping, implicitly for ``optim.clip_grad``), and
    :meth:`step` goes through the scaler (a step with non-finite gradients is skipped).
    """

    def __init__(self, fabric: Any, module: nn.Module, clip_grad: float | None,
                 optimizers: dict[str, Any]) -> None:
        self.fabric, self.module, self.clip_grad = fabric, module, clip_grad
        self.optimizers = optimizers
        self._unscaled: set[int] = set()  # ids of optimizers whose gradients are unscaled since their last step

    def backward(self, loss: Tensor, model: nn.Module | None = None) -> None:
        self.fabric.backward(loss, model=model if model is not None else self.module)

    def _wrapped(self, optimizer: torch.optim.Optimizer) -> Any:
        for wrapped in self.optimizers.values():
            if optimizer is wrapped:
                return wrapped
        raise RuntimeError(f"{type(optimizer).__name__} is not one of the engine's optimizers: step the ones in "
                           f"helper.optimizers ({', '.join(self.optimizers)}), so precision and DDP apply")

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide this optimizer's gradients by the grad scaler's scale (a no-op without one); once per step."""
        wrapped = self._wrapped(optimizer)
        if id(wrapped) not in self._unscaled:
            self.fabric.strategy.precision.unscale_gradients(wrapped.optimizer)
            self._unscaled.add(id(wrapped))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        wrapped = self._wrapped(optimizer)
        if self.clip_grad is not None:
            if id(wrapped) in self._unscaled:
                # the method unscaled them already and Fabric's clip would unscale a second time (an error)
                params = self.fabric.strategy.precision.main_params(wrapped.optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
            else:
                self.fabric.clip_gradients(self.module, wrapped, max_norm=self.clip_grad, error_if_nonfinite=False)
        wrapped.step()
        wrapped.zero_grad(set_to_none=True)
        self._unscaled.discard(id(wrapped))

    def set_lr(self, optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
        apply_schedule(optimizer, lr, weight_decay)
