"""The shared loader helper: ``data.num_workers: auto``, worker settings, and batches that do not depend on them."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from vitlab.config import ConfigError, RunConfig, to_yaml
from vitlab.data import loader as loader_module
from vitlab.data.loader import MAX_AUTO_WORKERS, build_loader, resolve_num_workers
from vitlab.engine.seeding import EpochTaggedBatches, SeededItems, ShardedBatchSampler


def test_auto_is_the_default_and_integers_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RunConfig().data.num_workers == "auto"
    assert resolve_num_workers(0, cuda=True) == 0
    assert resolve_num_workers(3, cuda=False) == 3


@pytest.mark.parametrize("cores, local_world, cuda, expected", [
    (16, 1, True, MAX_AUTO_WORKERS),  # capped
    (16, 4, True, 4),  # shared by the node's processes
    (6, 1, False, 6),  # a CPU run with cores to spare
    (2, 1, False, 0),  # a small CPU machine loads in the main process
    (2, 1, True, 2),  # ... unless a GPU waits for the batches
    (1, 2, True, 1),  # never 0 processes' worth of cores
])
def test_auto_counts_the_cores_of_this_process(monkeypatch: pytest.MonkeyPatch, cores: int, local_world: int,
                                               cuda: bool, expected: int) -> None:
    monkeypatch.setattr(loader_module.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    assert resolve_num_workers("auto", cuda=cuda) == expected


@pytest.mark.parametrize("value", [-1, "many", 2.5, True])
def test_bad_worker_counts_are_one_line_errors(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^data\.num_workers: got .*, expected an integer >= 0 or 'auto'$"):
        resolve_num_workers(value, cuda=False)  # type: ignore[arg-type]


def test_workers_persist_and_prefetch_only_when_there_are_workers() -> None:
    data = list(range(8))
    inline = build_loader(data, 0, batch_size=4)  # type: ignore[arg-type]
    assert inline.num_workers == 0 and not inline.persistent_workers and not inline.pin_memory
    pooled = build_loader(data, 2, batch_size=4)  # type: ignore[arg-type]
    assert pooled.num_workers == 2 and pooled.persistent_workers and pooled.prefetch_factor == 4
    assert not pooled.pin_memory  # the CPU: nothing to pin for
    pinned = build_loader(data, 0, batch_size=4, device="cuda")  # type: ignore[arg-type]
    assert pinned.pin_memory


class _Noisy(Dataset[float]):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> float:
        return float(torch.rand(())) + index


def _epochs(num_workers: int, epochs: int = 3) -> list[list[float]]:
    items = SeededItems(_Noisy(), seed=5)
    sampler = ShardedBatchSampler(len(items), 4, seed=5)
    loader = build_loader(items, num_workers, batch_sampler=EpochTaggedBatches(sampler))
    out = []
    for epoch in range(epochs):
        items.set_epoch(epoch)
        sampler.set_epoch(epoch)
        out.append([v for batch in loader for v in batch.tolist()])
    return out


def test_persistent_workers_give_the_batches_of_the_main_process() -> None:
    inline = _epochs(0)
    assert inline[0] != inline[1] != inline[2]  # a fresh draw every epoch
    assert _epochs(2) == inline  # workers that live across epochs still see the current epoch


def test_written_config_can_hold_a_resolved_count() -> None:
    cfg = RunConfig()
    assert "num_workers: auto" in to_yaml(cfg)
    cfg.data.num_workers = 2
    assert "num_workers: 2" in to_yaml(cfg)
