"""Checkpoints: plain tensors and types only, written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict, written by :func:`save_checkpoint` (the engine's last/best checkpoints, the int8 export, the
test fixtures)::

    {"format": "vitlab-ckpt", "version": 1, "config": <RunConfig as plain dicts>, "data_info": <DataInfo as a dict>,
     "method": <method state dict>, "optimizers": {name: state dict}, "ema": <EMA state dict> | None, "step": int,
     "epoch": int, "batch_in_epoch": int, "rng": {...}, "metrics": {name: float}, "best": float | None}
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from vitlab.config import RunConfig, from_container, to_container
from vitlab.errors import CheckpointError as CheckpointError  # re-exported
from vitlab.errors import OutputError, writing

CKPT_FORMAT = "vitlab-ckpt"


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], None], what: str = "file") -> None:
    """Write through ``write`` into a temporary file in the same folder, flush it to disk, then rename it over
    ``path``. An exception (or a kill) during the write leaves any previous file at ``path`` untouched; a file-system
    error (read-only folder, disk full, file-size limit) is an :class:`~vitlab.errors.OutputError` naming ``path``."""
    path = Path(path)
    kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
    with writing(path, what, kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def check_writable(folder: str | Path, what: str) -> None:
    """Raise an :class:`~vitlab.errors.OutputError` now, before any work, if ``folder`` (or the nearest folder above
    it that exists) does not take a new file; leaves nothing behind."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{what} {folder}: cannot be written ({existing} is a file, not a folder)")
    with writing(folder, what), tempfile.TemporaryFile(dir=existing):
        pass


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file (see :func:`_atomic_write`)."""

    def write(f: BinaryIO) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:  # torch's zip writer reports a failed write (disk full) as a RuntimeError
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise

    _atomic_write(path, write, "checkpoint" if str(path).endswith(".ckpt") else "file")


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` through a temporary file (see :func:`_atomic_write`)."""

    def write(f: BinaryIO) -> None:
        f.write(data)

    _atomic_write(path, write)


def save_checkpoint(path: str | Path, cfg: RunConfig, data_info: Any, method_state: Mapping[str, Any], *,
                    optimizers: Mapping[str, Any] | None = None, ema: Mapping[str, Any] | None = None, step: int = 0,
                    epoch: int = 0, batch_in_epoch: int = 0, rng: Any = None,
                    metrics: Mapping[str, Any] | None = None, best: float | None = None) -> Path:
    """Write a vitlab checkpoint (the layout of this module's docstring) to ``path`` atomically; returns ``path``.

    Args:
        cfg: the resolved run configuration (stored as plain dicts, so that ``load_run_config`` rebuilds it).
        data_info: the run's :class:`~vitlab.methods.base.DataInfo` (or its fields as a mapping).
        method_state: ``method.state_dict()``.
        optimizers: ``{name: optimizer.state_dict()}``; ema: the engine EMA's state dict; step, epoch,
            batch_in_epoch, rng: where a resumed run continues; metrics, best: the last evaluation and the best monitor.
    """
    info = dict(data_info) if isinstance(data_info, Mapping) else dataclasses.asdict(data_info)
    state = {"format": CKPT_FORMAT, "version": 1, "config": to_container(cfg), "data_info": info,
             "method": method_state, "optimizers": dict(optimizers or {}), "ema": ema, "step": step, "epoch": epoch,
             "batch_in_epoch": batch_in_epoch, "rng": {} if rng is None else rng, "metrics": dict(metrics or {}),
             "best": best}
    atomic_torch_save(state, path)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a vitlab checkpoint with ``weights_only=True``; a missing or foreign file is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found (a run writes runs/<name>/last.ckpt and best.ckpt)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: the file is empty (a run writes runs/<name>/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {path}: cannot be read as a weights-only torch file ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a vitlab checkpoint (expected a dict with format "
                              f"{CKPT_FORMAT!r}; for a bare state dict use `--model NAME --weights PATH`)")
    return ckpt


def _describe(method: Any, model: Any, num_classes: Any) -> str:
    return f"method {method}, model.name {model} with {num_classes} classes"


def check_state_fits(path: str | Path, ckpt: Mapping[str, Any], cfg: RunConfig, num_classes: int,
                     state: Mapping[str, Any]) -> None:
    """Raise a :class:`CheckpointError` naming both models when the checkpoint's weights do not fit ``state`` (the
    state dict of the method built from ``cfg``): another architecture, another class count, another method."""
    saved = ckpt.get("method") or {}
    missing = [k for k in state if k not in saved]
    unexpected = [k for k in saved if k not in state]
    reshaped = [k for k in state if k in saved and getattr(state[k], "shape", None) is not None
                and tuple(getattr(saved[k], "shape", ())) != tuple(state[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    theirs = ckpt.get("config") or {}
    their_info = ckpt.get("data_info") or {}
    detail = (f"{len(reshaped)} tensors of another shape, e.g. {reshaped[0]}" if reshaped else
              f"{len(missing)} missing and {len(unexpected)} unexpected tensors, e.g. "
              f"{(missing or unexpected)[0]}")
    held = _describe((theirs.get("method") or {}).get("name"), (theirs.get("model") or {}).get("name"),
                     their_info.get("num_classes"))
    built = _describe(cfg.method.name, cfg.model.name, num_classes)
    raise CheckpointError(f"checkpoint {path}: holds {held}, but this run builds {built} ({detail}); resume with the "
                          "run's own recipe (its config.yaml) or start another run name")


def check_data_fits(path: str | Path, ckpt: Mapping[str, Any], datasets: Mapping[str, Any], data: Any) -> None:
    """Raise a :class:`~vitlab.errors.DataError` when the data sets (built from the ``data`` section ``data``) have
    more classes, or other channels, than the checkpoint's model was trained for."""
    from vitlab.errors import DataError

    info = ckpt.get("data_info") or {}
    model = (ckpt.get("config") or {}).get("model") or {}
    trained = info.get("num_classes")
    for split, dataset in datasets.items():
        classes = getattr(dataset, "num_classes", None)
        if trained is not None and classes is not None and int(classes) > int(trained):
            raise DataError(f"data.name {data.name} ({split} split): {classes} classes, but checkpoint {path} "
                            f"holds model.name {model.get('name')} trained for {trained} classes; evaluate on data "
                            "with the checkpoint's classes")
    if info.get("channels") is not None and data.channels != info["channels"]:
        raise DataError(f"data.channels: got {data.channels}, but checkpoint {path} holds model.name "
                        f"{model.get('name')} trained on {info['channels']}-channel images")


def load_run_config(path: str | Path) -> RunConfig:
    """The resolved configuration stored inside a checkpoint."""
    return from_container(load_checkpoint(path)["config"])


def load_method(path: str | Path, use_ema: bool | None = None) -> tuple[Any, dict[str, Any]]:
    """Rebuild the method of a checkpoint with its trained weights (EMA weights when the run evaluated them).

    Returns ``(method, checkpoint)``; the method is in eval mode on the CPU.
    """
    from vitlab.methods.base import DataInfo, build_method

    ckpt = load_checkpoint(path)
    cfg = from_container(ckpt["config"])
    info = DataInfo(**ckpt["data_info"])
    method = build_method(cfg, info)
    missing, unexpected = method.load_state_dict(ckpt["method"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path}: does not match its own config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    if use_ema is None:
        use_ema = cfg.ema.enabled and cfg.ema.evaluate
    if use_ema and ckpt.get("ema") is not None:
        method.eval_model().load_state_dict(_strip_prefix(ckpt["ema"], "module."))
    return method.eval(), ckpt


def load_eval_model(path: str | Path, use_ema: bool | None = None) -> nn.Module:
    """The trained model of a checkpoint (what ``vitlab eval``, attacks and export use), in eval mode."""
    method, _ = load_method(path, use_ema)
    return method.eval_model().eval()


def load_frozen_teacher(path: str | Path, key: str = "method.teacher_ckpt") -> nn.Module:
    """A distillation teacher: :func:`load_eval_model` in eval mode with every parameter frozen. A missing file is a
    :class:`~vitlab.config.ConfigError` naming ``key``."""
    from vitlab.config import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"{key}: {path} not found (a vitlab checkpoint)")
    teacher = load_eval_model(path)
    teacher.requires_grad_(False).eval()
    return teacher


def _strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
