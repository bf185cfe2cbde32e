"""Every DataLoader vitlab builds: one helper, so worker count, pinned memory, prefetch and worker set-up agree.

``data.num_workers: auto`` (the default) becomes the cores this process may use (``os.sched_getaffinity``) divided by
the processes on this node (``LOCAL_WORLD_SIZE``), capped at :data:`MAX_AUTO_WORKERS`, and 0 on a CPU-only run with
at most :data:`CPU_INLINE_CORES` cores per process: there the workers would take the cores the model needs
(docs/data.md, "Loader", has the measurement). An integer is used as given.

Reproducibility does not depend on the worker count: the engine seeds every training item from (seed, epoch, index)
(:class:`vitlab.engine.seeding.SeededItems`), so any number of workers yields the same batches.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vitlab.errors import ConfigError

__all__ = ["CPU_INLINE_CORES", "MAX_AUTO_WORKERS", "PREFETCH_FACTOR", "build_loader", "cores_per_process",
           "resolve_num_workers"]

MAX_AUTO_WORKERS = 8  # more workers rarely help one GPU and each holds a copy of the data set
CPU_INLINE_CORES = 2  # CPU-only runs with this many cores per process or fewer load in the main process
PREFETCH_FACTOR = 4  # batches each worker keeps ready (PyTorch's default is 2)


def cores_per_process() -> int:
    """The cores this process may run on (its CPU affinity), shared by the ``LOCAL_WORLD_SIZE`` processes of a node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows: no affinity call
        cores = os.cpu_count() or 1
    local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores // local_world)


def resolve_num_workers(value: int | str, cuda: bool) -> int:
    """``data.num_workers`` as a count: ``"auto"`` -> the cores per process, capped (0 on small CPU-only runs).

    Args:
        value: an integer >= 0 or ``"auto"``.
        cuda: whether the batches go to a CUDA device (the main process is then free to feed it).
    """
    if isinstance(value, bool) or not (value == "auto" or (isinstance(value, int) and value >= 0)):
        raise ConfigError(f"data.num_workers: got {value!r}, expected an integer >= 0 or 'auto'")
    if isinstance(value, int):
        return value
    cores = cores_per_process()
    if not cuda and cores <= CPU_INLINE_CORES:
        return 0
    return min(cores, MAX_AUTO_WORKERS)


def ignore_stop_signals(worker_id: int) -> None:
    """Data-loader workers leave Ctrl-C to the main process (which stops after the step and saves)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_loader(dataset: Dataset[Any], num_workers: int | str, *, batch_size: int | None = 1,
                 batch_sampler: Sampler[list[Any]] | Iterable[list[Any]] | None = None, shuffle: bool = False,
                 collate_fn: Callable[[list[Any]], Any] | None = None, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> DataLoader[Any]:
    """A DataLoader set up for throughput: persistent workers and prefetch when ``num_workers > 0``, pinned memory
    when ``device`` is CUDA, workers that ignore Ctrl-C.

    Args:
        num_workers: a count, or ``"auto"`` (see :func:`resolve_num_workers`).
        batch_size, batch_sampler, shuffle, collate_fn, generator: as for :class:`~torch.utils.data.DataLoader`
            (give ``batch_sampler`` or ``batch_size``).
        device: where the batches go; None means the CPU.
    """
    cuda = device is not None and torch.device(device).type == "cuda"
    workers = resolve_num_workers(num_workers, cuda)
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": PREFETCH_FACTOR}
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,  # type: ignore[arg-type]
                          collate_fn=collate_fn, generator=generator, pin_memory=cuda,
                          worker_init_fn=ignore_stop_signals, **extra)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate_fn,
                      generator=generator, pin_memory=cuda, worker_init_fn=ignore_stop_signals, **extra)
