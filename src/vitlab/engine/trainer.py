"""The training loop: short and linear, on Lightning Fabric for devices, DDP, precision and process launch.

The same function runs in one CPU process, on one GPU, or in every process of a ``torchrun`` launch (gloo on CPU,
nccl on GPU, one or many nodes). Read :func:`train` top to bottom: :func:`setup` builds everything a run needs into a
:class:`Run`, :func:`train_one_epoch` steps through one epoch's batches (:func:`train_step` per batch),
:func:`evaluate` and :func:`save_last` end an epoch, :func:`end_of_epoch` keeps ``best.ckpt``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from vitlab.config import ConfigError, RunConfig, to_yaml
from vitlab.data.loader import build_loader, resolve_num_workers
from vitlab.engine.checkpoint import (
    atomic_write_bytes,
    check_state_fits,
    check_writable,
    load_checkpoint,
    save_checkpoint,
)
from vitlab.engine.ema import ModelEma
from vitlab.engine.logging import RunLogger
from vitlab.engine.optim import FabricStepHelper, apply_schedule, build_optimizer, build_schedules
from vitlab.engine.seeding import (
    EpochTaggedBatches,
    SeededItems,
    ShardedBatchSampler,
    capture_rng_state,
    restore_rng_state,
    seed_everything,
)
from vitlab.engine.speed import SpeedSettings, apply_speed, inputs_channels_last, matmul_precision, resolve_speed
from vitlab.errors import NonFiniteLossError, writing
from vitlab.methods.base import METHODS, DataInfo, Method, Progress, build_method, data_info_from

__all__ = ["NonFiniteLossError", "Run", "RunExistsError", "TrainingInterrupted", "data_info_from", "make_fabric",
           "manual_step", "setup_optimization", "train"]


class RunExistsError(ConfigError):
    """The run folder already holds a checkpoint and neither resume nor overwrite was asked for."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped training after a whole step; ``last.ckpt`` holds it, ``--resume`` goes on."""


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


@dataclass
class Run:
    """Everything one training run holds: set up by :func:`setup`, advanced by :func:`train_one_epoch`."""

    cfg: RunConfig
    fabric: Any
    method: Method
    module: Any  # the Fabric-wrapped method
    optimizers: dict[str, Any]  # the Fabric-wrapped optimizers, by name ("main" for automatic optimisation)
    helper: FabricStepHelper
    ema: ModelEma | None
    info: DataInfo
    train_items: SeededItems
    sampler: ShardedBatchSampler
    loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    schedules: dict[str, np.ndarray]
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    max_steps: int
    logger: RunLogger
    speed: SpeedSettings  # train.compile / matmul_precision / channels_last, resolved for the device
    step: int = 0  # optimizer steps done
    start_epoch: int = 0
    start_batch: int = 0  # batches of ``start_epoch`` already used (resume inside an epoch)
    best: float | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    window: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # scalars since the last log
    window_start: float = field(default_factory=time.time)
    window_items: int = 0
    bar: Any = None
    stop_signal: str | None = None  # "SIGINT" / "SIGTERM" once one arrived: stop at the next step, resumable

    @property
    def rank(self) -> int:
        return int(self.fabric.global_rank)

    @property
    def world(self) -> int:
        return int(self.fabric.world_size)


def train(cfg: RunConfig, resume: str | None = None, overwrite: bool = False) -> dict[str, float]:
    """Train ``cfg.method`` and return the final evaluation metrics.

    Args:
        resume: ``"last"`` (the run folder's ``last.ckpt``) or a checkpoint path to continue from; None starts fresh.
        overwrite: start fresh even if the run folder already holds checkpoints (they are replaced).
    """
    run = setup(cfg, resume, overwrite)
    with matmul_precision(run.speed.matmul_precision):
        return _train_loop(run)


def _train_loop(run: Run) -> dict[str, float]:
    """The epochs of :func:`train` from where ``run`` stands; returns the final evaluation metrics."""
    cfg = run.cfg
    run.method.train()
    run.bar = _progress_bar(cfg.train.progress and run.rank == 0, min(run.total_steps, run.max_steps) - run.step,
                            "train")
    run.window_start = time.time()
    handlers = _catch_stop_signals(run)
    try:
        for epoch in range(run.start_epoch, cfg.train.epochs):
            if run.step >= run.max_steps:
                break
            position = train_one_epoch(run, epoch, run.start_batch if epoch == run.start_epoch else 0)
            if position < run.batches_per_epoch:  # stopped inside the epoch by train.max_steps
                run.last_metrics = evaluate(run, epoch)
                save_last(run, epoch, position)
                break
            end_of_epoch(run, epoch)
            if epoch + 1 < cfg.train.epochs and run.step < run.max_steps and _stop_requested(run):
                _stop(run, epoch + 1)
    finally:
        _restore_signal_handlers(handlers)
        if run.bar is not None:
            run.bar.stop()
        run.logger.close()
    return run.last_metrics


# ---- setup -------------------------------------------------------------------------------------------------------
def setup(cfg: RunConfig, resume: str | None, overwrite: bool) -> Run:
    """Processes and seeds, the run folder, data and method, optimizers wrapped by Fabric, and the resumed state."""
    fabric = make_fabric(cfg)
    fabric.launch()
    ckpt, ckpt_path = _prepare_run_dir(cfg, fabric, resume, overwrite)
    method, datasets, info = _build_method(cfg, fabric)
    if ckpt is not None:  # before anything is written: a checkpoint of another model is a one-line error
        check_state_fits(str(ckpt_path), ckpt, cfg, info.num_classes, method.state_dict())
    rank, world = fabric.global_rank, fabric.world_size
    ema = ModelEma(method.eval_model(), cfg.ema.decay) if cfg.ema.enabled else None
    speed = resolve_speed(cfg.train, fabric.device.type, method)
    apply_speed(speed, method)  # after the EMA copy: that stays a plain module

    bs = cfg.data.batch_size
    workers = resolve_num_workers(cfg.data.num_workers, fabric.device.type == "cuda")
    train_items = SeededItems(datasets["train"], cfg.train.seed)
    sampler = ShardedBatchSampler(len(train_items), bs, rank, world, cfg.train.seed)
    loader = build_loader(train_items, workers, batch_sampler=EpochTaggedBatches(sampler),
                          collate_fn=method.collate(), generator=torch.Generator().manual_seed(cfg.train.seed),
                          device=fabric.device)
    eval_loaders = {name: build_loader(_eval_subset(ds, rank, world), workers,
                                       batch_size=cfg.data.eval_batch_size, device=fabric.device)
                    for name, ds in datasets.items() if name != "train"}
    batches_per_epoch, steps_per_epoch = _epoch_length(cfg, len(train_items), world)
    total_steps = cfg.train.epochs * steps_per_epoch
    schedules = build_schedules(cfg, steps_per_epoch)
    schedules.update(method.schedules(total_steps, steps_per_epoch))
    ema_decay = method.ema_decay_schedule(total_steps, steps_per_epoch)
    if ema_decay is not None:
        schedules["ema_decay"] = ema_decay

    module, optimizers, helper = setup_optimization(cfg, fabric, method)
    if ema is not None:
        ema.to(fabric.device)

    with writing(cfg.run_dir, "run folder"):
        logger = RunLogger(cfg.run_dir, enabled=rank == 0, resume_step=ckpt["step"] if ckpt is not None else None)
    run = Run(cfg=cfg, fabric=fabric, method=method, module=module, optimizers=optimizers,
              helper=helper, ema=ema, info=info,
              train_items=train_items, sampler=sampler, loader=loader, eval_loaders=eval_loaders, schedules=schedules,
              batches_per_epoch=batches_per_epoch, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
              max_steps=cfg.train.max_steps if cfg.train.max_steps is not None else total_steps,
              logger=logger, speed=speed)
    if ckpt is not None:
        _restore(run, ckpt)
    if rank == 0:  # the resolved worker count and speed settings are recorded; checkpoints keep "auto" to re-resolve
        written = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=workers),
                                      train=dataclasses.replace(cfg.train, compile=speed.compile,
                                                                matmul_precision=speed.matmul_precision,
                                                                channels_last=speed.channels_last))
        atomic_write_bytes(to_yaml(written).encode(), cfg.run_dir / "config.yaml")
    n_params = sum(p.numel() for p in method.eval_model().parameters())
    run.logger.info(
        f"{'resuming' if ckpt else 'starting'} {cfg.name}: method {cfg.method.name}, model {cfg.model.name} "
        f"({n_params / 1e6:.2f}M params), data {cfg.data.name} ({len(train_items)} train items), "
        f"{world} process(es) on {fabric.device}, {cfg.train.epochs} epochs x {steps_per_epoch} steps"
        + (f", from step {run.step}" if ckpt else ""))
    return run


def setup_optimization(cfg: RunConfig, fabric: Any, method: Method) -> tuple[Any, dict[str, Any], FabricStepHelper]:
    """The method wrapped by Fabric, its optimizers built and wrapped (the default one, ``"main"``, for automatic
    optimisation; the method's own, built with the engine's builder, for manual), and the step helper over them."""
    if method.automatic_optimization:
        optimizers = {"main": build_optimizer(cfg, method.param_groups())}
    else:
        optimizers = method.configure_optimizers(partial(build_optimizer, cfg))
    module = fabric.setup_module(method)
    if not method.automatic_optimization:
        module.mark_forward_method("training_step")
    wrapped = {k: fabric.setup_optimizers(v) for k, v in optimizers.items()}
    return module, wrapped, FabricStepHelper(fabric, module, cfg.optim.clip_grad, wrapped)


def _prepare_run_dir(cfg: RunConfig, fabric: Any, resume: str | None,
                     overwrite: bool) -> tuple[dict[str, Any] | None, str | None]:
    """The checkpoint to resume from and its path (or None, None); refuses to overwrite a run unless asked, clears
    it when asked (only vitlab's own files inside the run folder), and checks that the run folder can be written."""
    run_dir = cfg.run_dir
    if fabric.global_rank == 0:
        check_writable(run_dir, "run folder")
    if resume == "last":
        resume = str(run_dir / "last.ckpt")
    if resume is None and (run_dir / "last.ckpt").exists() and not overwrite:
        raise RunExistsError(f"run folder {run_dir} already holds last.ckpt: pass --resume to continue it, "
                             "--overwrite to start again, or choose another --set name=...")
    ckpt = load_checkpoint(resume) if resume else None
    if fabric.global_rank == 0 and run_dir.is_dir():  # temporary files of a write that was killed (kill -9)
        for name in ("last.ckpt", "best.ckpt", "config.yaml"):
            for torn in run_dir.glob(f".{name}.*tmp"):
                torn.unlink(missing_ok=True)
    if fabric.global_rank == 0 and ckpt is None and overwrite and run_dir.exists():
        for stale in ("last.ckpt", "best.ckpt", "metrics.csv", "log.txt", "tb", "export"):
            p = run_dir / stale  # a link is removed, never followed: nothing outside the run folder is deleted
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    fabric.barrier()
    return ckpt, resume


def _build_method(cfg: RunConfig, fabric: Any) -> tuple[Method, dict[str, Dataset], DataInfo]:
    """The method's data sets (built by one process per node first: bundled sets are cached on first use) and the
    method, with identical initial weights in every process and for every world size."""
    method_cls = METHODS[cfg.method.name] if cfg.method.name in METHODS else None
    if method_cls is None:
        from vitlab.plugins import load_method_plugins

        load_method_plugins()

        method_cls = METHODS[cfg.method.name]
    if fabric.local_rank == 0:
        datasets = method_cls.build_datasets(cfg)
    fabric.barrier()
    if fabric.local_rank != 0:
        datasets = method_cls.build_datasets(cfg)
    if "train" not in datasets:
        raise ConfigError(f"method.name: {cfg.method.name!r} has no training set (it is evaluated, not trained: "
                          "use `vitlab eval --ckpt`)")
    info = data_info_from(cfg, datasets["train"])
    seed_everything(cfg.train.seed)
    method = build_method(cfg, info)
    seed_everything(cfg.train.seed + fabric.global_rank)
    return method, datasets, info


def _epoch_length(cfg: RunConfig, items: int, world: int) -> tuple[int, int]:
    """(batches, optimizer steps) per epoch: whole accumulation groups of whole global batches."""
    bs, accum = cfg.data.batch_size, cfg.optim.accum_steps
    batches_per_epoch = (items // (bs * world)) // accum * accum
    if batches_per_epoch == 0:
        raise ConfigError(f"data.batch_size: {bs} x {world} processes x optim.accum_steps {accum} is larger than the "
                          f"training set ({items} items)")
    if cfg.train.steps_per_epoch is not None:  # e.g. SCORE's epochs counted in batches of the real+generated mix
        batches_per_epoch = min(batches_per_epoch, cfg.train.steps_per_epoch * accum)
    return batches_per_epoch, batches_per_epoch // accum


def _restore(run: Run, ckpt: Mapping[str, Any]) -> None:
    """Method, optimizers, EMA, counters, metrics and this process's RNG state from a checkpoint."""
    run.method.load_state_dict(ckpt["method"])
    for k, opt in run.optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][k])
    if run.ema is not None and ckpt.get("ema") is not None:
        run.ema.load_state_dict(ckpt["ema"])
    run.step, run.start_epoch, run.start_batch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
    run.best, run.last_metrics = ckpt.get("best"), dict(ckpt.get("metrics", {}))
    rng = ckpt["rng"]
    restore_rng_state(rng[run.rank] if isinstance(rng, list) else rng)


# ---- one epoch ---------------------------------------------------------------------------------------------------
def train_one_epoch(run: Run, epoch: int, first: int) -> int:
    """Train from batch ``first`` to the end of the epoch (or ``train.max_steps``); returns the batches used."""
    cfg = run.cfg
    run.train_items.set_epoch(epoch)
    run.sampler.set_epoch(epoch, first)
    position = first  # batches of this epoch already used
    for i, batch in enumerate(run.loader, start=first):
        if i >= run.batches_per_epoch or run.step >= run.max_steps:
            break
        position = i + 1
        batch = run.fabric.to_device(batch)
        if run.speed.channels_last:
            batch = inputs_channels_last(batch)
        progress = Progress(step=run.step, epoch=epoch, total_steps=run.total_steps,
                            steps_per_epoch=run.steps_per_epoch,
                            values={k: float(v[min(run.step, len(v) - 1)]) for k, v in run.schedules.items()})
        out = train_step(run, batch, progress, last_micro=(i + 1) % cfg.optim.accum_steps == 0)
        if out is None:
            continue
        run.window_items += run.method.batch_items(batch) * cfg.optim.accum_steps
        for k, v in _to_float_dict(out).items():
            run.window[k].append(v)
        if run.bar is not None:
            run.bar.update(run.bar.task_ids[0], advance=1, status=f"loss {float(out['loss']):.4f}")
        if run.step % cfg.train.log_every == 0:
            _log_window(run, epoch, progress["lr"])
        every = cfg.train.ckpt_every_steps
        if every and run.step % every == 0 and position < run.batches_per_epoch:
            save_last(run, epoch, position)
        if position < run.batches_per_epoch and _stop_requested(run):
            save_last(run, epoch, position)
            _stop(run, epoch)
    return position


def train_step(run: Run, batch: Any, progress: Progress, last_micro: bool) -> dict[str, Any] | None:
    """One batch: forward and backward (and the optimizer step on the last micro-batch of an accumulation group),
    or the method's own steps. Returns the scalars to log after an optimizer step, None inside an accumulation."""
    fabric, method, module = run.fabric, run.method, run.module
    if method.automatic_optimization:
        opt = run.optimizers["main"]
        apply_schedule(opt, progress["lr"], progress["weight_decay"])
        with fabric.no_backward_sync(module, enabled=not last_micro):
            out = module(batch, progress)
            _check_finite(fabric, out["loss"], out, progress.step, progress.epoch, run.cfg.run_dir)
            fabric.backward(out["loss"] / run.cfg.optim.accum_steps)
        if last_micro:
            if run.cfg.optim.clip_grad is not None:
                fabric.clip_gradients(module, opt, max_norm=run.cfg.optim.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        out = manual_step(fabric, module, batch, progress, run.helper)
        _check_finite(fabric, out["loss"], out, progress.step, progress.epoch, run.cfg.run_dir)
    if not last_micro:
        return None
    # per-step updates: the method's own (EMA teachers, momentum), then the weight EMA (its decay may be scheduled)
    method.on_optimizer_step(progress)
    if run.ema is not None:
        run.ema.update(method.eval_model(), progress.values.get("ema_decay"))
    run.step += 1
    return out


def manual_step(fabric: Any, module: Any, batch: Any, progress: Progress, helper: FabricStepHelper) -> dict[str, Any]:
    """A manual-optimisation method's ``training_step`` under the run's precision (autocast for ``*-mixed``).

    Fabric enters its precision context for a marked forward method only when a strategy wraps the module (DDP); on
    one device the call reaches the method directly, so the context is entered here (a no-op for 32-true).
    """
    with fabric.autocast():
        return module.training_step(batch, progress, helper)  # type: ignore[no-any-return]


def _log_window(run: Run, epoch: int, lr: float) -> None:
    """Mean of every logged scalar since the last log (averaged over processes), the lr and the throughput."""
    means = {k: float(np.mean(v)) for k, v in run.window.items()}
    means = {k: float(run.fabric.all_reduce(torch.tensor(v), reduce_op="mean")) for k, v in means.items()}
    dt = time.time() - run.window_start
    means["lr"] = lr
    means["items_per_s"] = run.window_items * run.world / max(dt, 1e-9)
    run.logger.metrics(run.step, epoch, "train", means)
    run.logger.info(f"epoch {epoch} step {run.step}/{run.total_steps} " +
                    "  ".join(f"{k} {v:.4g}" for k, v in means.items()))
    run.window.clear()
    run.window_start, run.window_items = time.time(), 0


# ---- evaluate and save -------------------------------------------------------------------------------------------
def end_of_epoch(run: Run, epoch: int) -> None:
    """Evaluate when due (every ``train.eval_every`` epochs, the last epoch, the last step); keep last and best."""
    cfg = run.cfg
    if not ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs or run.step >= run.max_steps):
        save_last(run, epoch + 1, 0)
        return
    run.last_metrics = evaluate(run, epoch)
    monitor, larger_is_better = run.method.monitor
    value = run.last_metrics.get(monitor)
    improved = value is not None and (run.best is None or (value > run.best if larger_is_better else value < run.best))
    if improved:
        run.best = value
    save_last(run, epoch + 1, 0)
    if improved and run.rank == 0:
        run_dir = cfg.run_dir
        shutil.copyfile(run_dir / "last.ckpt", run_dir / ".best.ckpt.tmp")
        os.replace(run_dir / ".best.ckpt.tmp", run_dir / "best.ckpt")


def evaluate(run: Run, epoch: int) -> dict[str, float]:
    """The method's metrics on the evaluation loaders (of the weight EMA when ``ema.evaluate``), logged."""
    model = run.ema.module if (run.ema is not None and run.cfg.ema.evaluate) else None
    run.method.eval()
    with torch.no_grad():
        metrics = run.method.evaluate(run.eval_loaders, run.fabric, model=model)
    run.method.train()
    run.logger.metrics(run.step, epoch, "eval", metrics)
    run.logger.info(f"epoch {epoch} step {run.step}: " + "  ".join(f"{k} {float(v):.4f}" for k, v in metrics.items()
                                                                   if isinstance(v, (int, float))))
    return metrics


def save_last(run: Run, epoch: int, batch_in_epoch: int) -> None:
    """``last.ckpt``: everything :func:`_restore` needs to continue at batch ``batch_in_epoch`` of ``epoch``."""
    rng_states: Any = capture_rng_state()
    if run.world > 1:
        gathered: list[Any] = [None] * run.world
        torch.distributed.all_gather_object(gathered, rng_states)
        rng_states = gathered
    if run.rank == 0:
        save_checkpoint(run.cfg.run_dir / "last.ckpt", run.cfg, run.info, run.method.state_dict(),
                        optimizers={k: o.state_dict() for k, o in run.optimizers.items()},
                        ema=run.ema.state_dict() if run.ema is not None else None, step=run.step, epoch=epoch,
                        batch_in_epoch=batch_in_epoch, rng=rng_states, metrics=run.last_metrics, best=run.best)
    run.fabric.barrier()


# ---- stop signals ------------------------------------------------------------------------------------------------
def _catch_stop_signals(run: Run) -> dict[signal.Signals, Any] | None:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) stop training after the current step with a resumable
    ``last.ckpt``; a second signal acts at once. Returns the previous handlers (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        if run.stop_signal is not None:  # the second one: act at once
            _restore_signal_handlers(previous)
            signal.raise_signal(signum)
            return
        run.stop_signal = signal.Signals(signum).name
        if run.rank == 0:
            print(f"{run.stop_signal}: stopping after this step (again to stop at once)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return previous


def _restore_signal_handlers(previous: dict[signal.Signals, Any] | None) -> None:
    for sig, old in (previous or {}).items():
        signal.signal(sig, old)


def _stop_requested(run: Run) -> bool:
    """Whether a stop signal arrived, in any process (all processes stop at the same step)."""
    stop = run.stop_signal is not None
    if run.world > 1:
        flag = torch.tensor(float(stop), device=run.fabric.device)
        stop = bool(run.fabric.all_reduce(flag, reduce_op="sum") > 0)
    return stop


def _stop(run: Run, epoch: int) -> None:
    run.logger.info(f"stopped by {run.stop_signal or 'a signal'} at epoch {epoch} step {run.step}; "
                    f"{run.cfg.run_dir / 'last.ckpt'} holds it")
    raise TrainingInterrupted(f"stopped at epoch {epoch} step {run.step}; {run.cfg.run_dir / 'last.ckpt'} holds it: "
                              "continue with --resume")


# ---- small pieces ------------------------------------------------------------------------------------------------
def _eval_subset(dataset: Dataset, rank: int, world: int) -> Dataset:
    """Every process evaluates a disjoint strided share; metrics are summed across processes (no padding)."""
    if world == 1:
        return dataset
    return Subset(dataset, list(range(rank, len(dataset), world)))  # type: ignore[arg-type]


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


def _check_finite(fabric: Any, loss: Tensor, out: Mapping[str, Any], step: int, epoch: int, run_dir: Any) -> None:
    bad = not bool(torch.isfinite(loss.detach()).all())
    if fabric.world_size > 1:
        bad = bool(fabric.all_reduce(torch.tensor(float(bad)), reduce_op="sum") > 0)
    if bad:
        terms = ", ".join(f"{k}={float(v.detach().float().mean()):.4g}"
                          for k, v in out.items() if isinstance(v, Tensor))
        raise NonFiniteLossError(f"non-finite loss at epoch {epoch} step {step} ({terms}); stopped. The last good "
                                 f"checkpoint is {run_dir / 'last.ckpt'} — lower optim.lr or set optim.clip_grad")
