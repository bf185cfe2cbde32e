"""The training loop: short and linear, on Lightning Fabric for devices, DDP, precision and process launch.

The same function runs in one CPU process, on one GPU, or in every process of a ``torchrun`` launch (gloo on CPU,
nccl on GPU, one or many nodes). Read :func:`train` top to bottom; each phase has a comment.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from vitlab.config import ConfigError, RunConfig, to_container, to_yaml
from vitlab.engine.checkpoint import CKPT_FORMAT, atomic_torch_save, atomic_write_bytes, load_checkpoint
from vitlab.engine.ema import ModelEma
from vitlab.engine.logging import RunLogger
from vitlab.engine.schedules import constant_schedule, cosine_schedule, step_schedule
from vitlab.engine.seeding import (
    SeededItems,
    ShardedBatchSampler,
    capture_rng_state,
    restore_rng_state,
    seed_everything,
)
from vitlab.methods.base import METHODS, DataInfo, Method, Progress, build_method


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class RunExistsError(ConfigError):
    """The run folder already holds a checkpoint and neither resume nor overwrite was asked for."""


def make_fabric(cfg: RunConfig) -> Any:
    """A Fabric for this process. Under ``torchrun`` the world comes from the environment (one process per device)."""
    from lightning_fabric import Fabric

    t = cfg.train
    accelerator = t.accelerator
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        devices: Any = local
        num_nodes = world // local
        strategy = "ddp" if t.strategy in ("auto", "ddp") else t.strategy
    else:
        devices = 1 if t.devices == "auto" else (int(t.devices) if t.devices.isdigit() else
                                                  [int(d) for d in t.devices.split(",")])
        num_nodes = t.num_nodes
        strategy = t.strategy
        if strategy == "auto" and ((isinstance(devices, int) and devices > 1) or isinstance(devices, list)):
            strategy = "ddp"
    precision = t.precision
    if accelerator == "cpu" and precision in ("16-mixed",):
        raise ConfigError("train.precision: 16-mixed needs a GPU; use bf16-mixed or 32-true on the CPU")
    return Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                  precision=precision)  # type: ignore[arg-type]


def build_optimizer(cfg: RunConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
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
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and group.get("apply_wd", True):
            group["weight_decay"] = weight_decay


class _FabricStepHelper:
    """Backward and step for manual-optimisation methods, through Fabric (precision, DDP)."""

    def __init__(self, fabric: Any, module: nn.Module, clip_grad: float | None,
                 optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.fabric, self.module, self.clip_grad = fabric, module, clip_grad
        self.optimizers = optimizers  # the Fabric-wrapped optimizers, by the names configure_optimizers gave them

    def backward(self, loss: Tensor, model: nn.Module | None = None) -> None:
        self.fabric.backward(loss, model=model if model is not None else self.module)

    def step(self, optimizer: torch.optim.Optimizer, parameters: Iterable[Tensor] | None = None) -> None:
        if self.clip_grad is not None:
            params = list(parameters) if parameters is not None else [
                p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def set_lr(self, optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
        apply_schedule(optimizer, lr, weight_decay)


def _eval_subset(dataset: Dataset, rank: int, world: int) -> Dataset:
    """Every process evaluates a disjoint strided share; metrics are summed across processes (no padding)."""
    if world == 1:
        return dataset
    return Subset(dataset, list(range(rank, len(dataset), world)))  # type: ignore[arg-type]


def data_info_from(cfg: RunConfig, train_set: Any) -> DataInfo:
    for attr in ("num_classes", "mean", "std"):
        if not hasattr(train_set, attr):
            raise ConfigError(f"data.name: the {cfg.data.name!r} training set has no {attr!r} attribute")
    return DataInfo(num_classes=int(train_set.num_classes), channels=cfg.data.channels, img_size=cfg.data.img_size,
                    mean=tuple(float(m) for m in train_set.mean), std=tuple(float(s) for s in train_set.std),
                    classes=[str(c) for c in getattr(train_set, "classes", [])])


def _to_float_dict(out: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v.detach().float().mean()) if isinstance(v, Tensor) else float(v) for k, v in out.items()}


def _progress_bar(enabled: bool, total: int, description: str) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[status]}"), transient=True)
    bar.start()
    bar.add_task(description, total=total, status="")
    return bar


def train(cfg: RunConfig, resume: str | None = None, overwrite: bool = False) -> dict[str, float]:
    """Train ``cfg.method`` and return the final evaluation metrics.

    Args:
        resume: ``"last"`` (the run folder's ``last.ckpt``) or a checkpoint path to continue from; None starts fresh.
        overwrite: start fresh even if the run folder already holds checkpoints (they are replaced).
    """
    # ---- processes, devices, seeds -------------------------------------------------------------------------------
    fabric = make_fabric(cfg)
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    run_dir = cfg.run_dir
    if resume == "last":
        resume = str(run_dir / "last.ckpt")
    if resume is None and (run_dir / "last.ckpt").exists() and not overwrite:
        raise RunExistsError(f"run folder {run_dir} already holds last.ckpt: pass --resume to continue it, "
                             "--overwrite to start again, or choose another --set name=...")
    ckpt = load_checkpoint(resume) if resume else None
    if rank == 0 and ckpt is None and overwrite and run_dir.exists():
        for stale in ("last.ckpt", "best.ckpt", "metrics.csv", "log.txt", "tb", "export"):
            p = run_dir / stale
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    fabric.barrier()

    # ---- data and method ------------------------------------------------------------------------------------------
    method_cls = METHODS[cfg.method.name] if cfg.method.name in METHODS else None
    if method_cls is None:
        from vitlab.plugins import load_method_plugins

        load_method_plugins()
        method_cls = METHODS[cfg.method.name]
    # Bundled sets are rendered and cached on first use: one process per node builds, the others then read the cache.
    if fabric.local_rank == 0:
        datasets = method_cls.build_datasets(cfg)
    fabric.barrier()
    if fabric.local_rank != 0:
        datasets = method_cls.build_datasets(cfg)
    if "train" not in datasets:
        raise ConfigError(f"method.name: {cfg.method.name!r} has no training set (it is evaluated, not trained: "
                          "use `vitlab eval --ckpt`)")
    info = data_info_from(cfg, datasets["train"])
    seed_everything(cfg.train.seed)  # identical initial weights in every process and for every world size
    method: Method = build_method(cfg, info)
    seed_everything(cfg.train.seed + rank)
    ema = ModelEma(method.eval_model(), cfg.ema.decay) if cfg.ema.enabled else None

    bs = cfg.data.batch_size
    train_items = SeededItems(datasets["train"], cfg.train.seed)
    sampler = ShardedBatchSampler(len(train_items), bs, rank, world, cfg.train.seed)
    loader = DataLoader(train_items, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        collate_fn=method.collate(), generator=torch.Generator().manual_seed(cfg.train.seed))
    eval_loaders = {name: DataLoader(_eval_subset(ds, rank, world), batch_size=cfg.data.eval_batch_size,
                                     shuffle=False, num_workers=cfg.data.num_workers)
                    for name, ds in datasets.items() if name != "train"}
    accum = cfg.optim.accum_steps
    batches_per_epoch = (len(train_items) // (bs * world)) // accum * accum
    if batches_per_epoch == 0:
        raise ConfigError(f"data.batch_size: {bs} x {world} processes x optim.accum_steps {accum} is larger than the "
                          f"training set ({len(train_items)} items)")
    if cfg.train.steps_per_epoch is not None:  # e.g. SCORE's epochs counted in batches of the real+generated mix
        batches_per_epoch = min(batches_per_epoch, cfg.train.steps_per_epoch * accum)
    steps_per_epoch = batches_per_epoch // accum
    total_steps = cfg.train.epochs * steps_per_epoch
    schedules = build_schedules(cfg, steps_per_epoch)
    schedules.update(method.schedules(total_steps, steps_per_epoch))

    # ---- optimizers, wrapped by Fabric ----------------------------------------------------------------------------
    if method.automatic_optimization:
        optimizers = {"main": build_optimizer(cfg, method.param_groups())}
    else:
        optimizers = method.configure_optimizers()
    module = fabric.setup_module(method)
    if not method.automatic_optimization:
        module.mark_forward_method("training_step")
    optimizers = {k: fabric.setup_optimizers(v) for k, v in optimizers.items()}
    if ema is not None:
        ema.to(fabric.device)

    # ---- resume ---------------------------------------------------------------------------------------------------
    step, start_epoch, start_batch, best, last_metrics = 0, 0, 0, None, {}
    if ckpt is not None:
        method.load_state_dict(ckpt["method"])
        for k, opt in optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][k])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        step, start_epoch, start_batch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        best, last_metrics = ckpt.get("best"), dict(ckpt.get("metrics", {}))
        rng = ckpt["rng"]
        restore_rng_state(rng[rank] if isinstance(rng, list) else rng)
    logger = RunLogger(run_dir, enabled=rank == 0, resume_step=step if ckpt is not None else None)
    if rank == 0:
        atomic_write_bytes(to_yaml(cfg).encode(), run_dir / "config.yaml")
    n_params = sum(p.numel() for p in method.eval_model().parameters())
    logger.info(f"{'resuming' if ckpt else 'starting'} {cfg.name}: method {cfg.method.name}, model {cfg.model.name} "
                f"({n_params / 1e6:.2f}M params), data {cfg.data.name} ({len(train_items)} train items), "
                f"{world} process(es) on {fabric.device}, {cfg.train.epochs} epochs x {steps_per_epoch} steps"
                + (f", from step {step}" if ckpt else ""))

    monitor, larger_is_better = method.monitor
    helper = _FabricStepHelper(fabric, module, cfg.optim.clip_grad, optimizers)
    max_steps = cfg.train.max_steps if cfg.train.max_steps is not None else total_steps

    def save(path_name: str, epoch: int, batch_in_epoch: int) -> None:
        rng_states: Any = capture_rng_state()
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, rng_states)
            rng_states = gathered
        if rank == 0:
            state = {"format": CKPT_FORMAT, "version": 1, "config": to_container(cfg), "data_info": asdict(info),
                     "method": method.state_dict(), "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                     "ema": ema.state_dict() if ema is not None else None, "step": step, "epoch": epoch,
                     "batch_in_epoch": batch_in_epoch, "rng": rng_states, "metrics": last_metrics, "best": best}
            atomic_torch_save(state, run_dir / path_name)
        fabric.barrier()

    def evaluate(epoch: int) -> dict[str, float]:
        model = ema.module if (ema is not None and cfg.ema.evaluate) else None
        method.eval()
        with torch.no_grad():
            metrics = method.evaluate(eval_loaders, fabric, model=model)
        method.train()
        logger.metrics(step, epoch, "eval", metrics)
        logger.info(f"epoch {epoch} step {step}: " + "  ".join(f"{k} {float(v):.4f}" for k, v in metrics.items()
                                                                   if isinstance(v, (int, float))))
        return metrics

    # ---- the loop -------------------------------------------------------------------------------------------------
    method.train()
    window: dict[str, list[float]] = defaultdict(list)
    t_window, n_window = time.time(), 0
    bar = _progress_bar(cfg.train.progress and rank == 0, min(total_steps, max_steps) - step, "train")
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            if step >= max_steps:
                break
            first = start_batch if epoch == start_epoch else 0
            train_items.set_epoch(epoch)
            sampler.set_epoch(epoch, first)
            position = first  # batches of this epoch already used
            for i, batch in enumerate(loader, start=first):
                if i >= batches_per_epoch or step >= max_steps:
                    break
                position = i + 1
                batch = fabric.to_device(batch)
                progress = Progress(step=step, epoch=epoch, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                    values={k: float(v[min(step, len(v) - 1)]) for k, v in schedules.items()})
                last_micro = (i + 1) % accum == 0
                # forward and backward (automatic), or the method's own steps (manual)
                if method.automatic_optimization:
                    opt = optimizers["main"]
                    apply_schedule(opt, progress["lr"], progress["weight_decay"])
                    with fabric.no_backward_sync(module, enabled=not last_micro):
                        out = module(batch, progress)
                        loss = out["loss"]
                        _check_finite(fabric, loss, out, step, epoch, run_dir)
                        fabric.backward(loss / accum)
                    if last_micro:
                        if cfg.optim.clip_grad is not None:
                            fabric.clip_gradients(module, opt, max_norm=cfg.optim.clip_grad)
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                else:
                    out = module.training_step(batch, progress, helper)
                    _check_finite(fabric, out["loss"], out, step, epoch, run_dir)
                if not last_micro:
                    continue
                # per-step updates: the method's own (EMA teachers, momentum), then the weight EMA
                method.on_optimizer_step(progress)
                if ema is not None:
                    # a method may schedule the EMA decay per step (e.g. SCORE's warm-up of the average)
                    ema.update(method.eval_model(), progress.values.get("ema_decay"))
                step += 1
                n_window += len(batch["label"]) * accum if isinstance(batch, Mapping) and "label" in batch else 0
                for k, v in _to_float_dict(out).items():
                    window[k].append(v)
                if bar is not None:
                    bar.update(bar.task_ids[0], advance=1, status=f"loss {float(out['loss']):.4f}")
                if step % cfg.train.log_every == 0:
                    means = {k: float(np.mean(v)) for k, v in window.items()}
                    means = {k: float(fabric.all_reduce(torch.tensor(v), reduce_op="mean")) for k, v in means.items()}
                    dt = time.time() - t_window
                    means["lr"] = progress["lr"]
                    means["items_per_s"] = n_window * world / max(dt, 1e-9)
                    logger.metrics(step, epoch, "train", means)
                    logger.info(f"epoch {epoch} step {step}/{total_steps} " +
                                "  ".join(f"{k} {v:.4g}" for k, v in means.items()))
                    window.clear()
                    t_window, n_window = time.time(), 0
                every = cfg.train.ckpt_every_steps
                if every and step % every == 0 and position < batches_per_epoch:
                    save("last.ckpt", epoch, position)
            if position < batches_per_epoch:  # stopped inside the epoch by train.max_steps
                last_metrics = evaluate(epoch)
                save("last.ckpt", epoch, position)
                break
            # ---- end of epoch: evaluate, keep last and best ---------------------------------------------------------
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs or step >= max_steps:
                last_metrics = evaluate(epoch)
                value = last_metrics.get(monitor)
                improved = value is not None and (best is None or (value > best if larger_is_better else value < best))
                if improved:
                    best = value
                save("last.ckpt", epoch + 1, 0)
                if improved and rank == 0:
                    shutil.copyfile(run_dir / "last.ckpt", run_dir / ".best.ckpt.tmp")
                    os.replace(run_dir / ".best.ckpt.tmp", run_dir / "best.ckpt")
            else:
                save("last.ckpt", epoch + 1, 0)
    finally:
        if bar is not None:
            bar.stop()
        logger.close()
    return last_metrics


def _check_finite(fabric: Any, loss: Tensor, out: Mapping[str, Any], step: int, epoch: int, run_dir: Any) -> None:
    bad = not bool(torch.isfinite(loss.detach()).all())
    if fabric.world_size > 1:
        bad = bool(fabric.all_reduce(torch.tensor(float(bad)), reduce_op="sum") > 0)
    if bad:
        terms = ", ".join(f"{k}={float(v.detach().float().mean()):.4g}"
                          for k, v in out.items() if isinstance(v, Tensor))
        raise NonFiniteLossError(f"non-finite loss at epoch {epoch} step {step} ({terms}); stopped. The last good "
                                 f"checkpoint is {run_dir / 'last.ckpt'} — lower optim.lr or set optim.clip_grad")

