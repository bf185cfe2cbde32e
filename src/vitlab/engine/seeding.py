"""Seeds and random-number-generator state.

Data randomness never comes from the global generators: the sampler's order is a function of (seed, epoch) and every
item's augmentation is seeded from (seed, epoch, index). The global generators (used by the method: mixup, attack
starts, dropout) are saved in checkpoints and restored on resume, so a resumed run continues exactly.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from vitlab.errors import ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one item of one epoch (SplitMix64 finaliser on the three numbers)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


def capture_rng_state() -> dict[str, Any]:
    """The global generators' states as plain tensors and types (loadable with ``weights_only=True``)."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SeededItems(torch.utils.data.Dataset):
    """Wraps a data set so that item ``i`` of epoch ``e`` is transformed under seed ``item_seed(seed, e, i)``.

    This makes augmentation independent of worker count, process count and where a run was resumed. An index may
    also be an ``(epoch, index)`` pair (as :class:`EpochTaggedBatches` yields): persistent loader workers keep their
    own copy of this object, so the epoch must travel with the index, not through :meth:`set_epoch`.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int | tuple[int, int]) -> Any:
        epoch = self.epoch
        if isinstance(index, tuple):
            epoch, index = index
        in_main_process = torch.utils.data.get_worker_info() is None
        if in_main_process:  # leave the method's generators untouched
            saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        s = item_seed(self.seed, epoch, index)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.default_generator.manual_seed(s)  # the CPU generator only: torch.manual_seed also visits every device
        try:
            return self.dataset[index]
        finally:
            if in_main_process:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ShardedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Global batches from a (seed, epoch) permutation; process ``rank`` takes its contiguous slice of each.

    With ``world_size`` processes of batch ``B`` the union of one step's slices is exactly the single-process batch
    of size ``world_size * B``, so a multi-process run sees the same data as the single-process one. Incomplete
    global batches are dropped. ``start_batch`` resumes in the middle of an epoch without loading skipped data.
    """

    def __init__(self, num_items: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True) -> None:
        if num_items < batch_size * world_size:
            raise ConfigError(f"the training set has {num_items} items, fewer than one global batch "
                              f"({batch_size} x {world_size} processes): lower data.batch_size")
        self.num_items, self.batch_size, self.rank, self.world_size = num_items, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_items // (self.batch_size * self.world_size) - self.start_batch

    def __iter__(self):  # type: ignore[no-untyped-def]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.num_items // global_batch):
            start = b * global_batch + self.rank * self.batch_size
            yield order[start:start + self.batch_size]


class EpochTaggedBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """The batches of a :class:`ShardedBatchSampler` as ``(epoch, index)`` pairs, for :class:`SeededItems`.

    The epoch is read when iteration starts (in the main process), so workers that persist across epochs still
    seed every item with the current epoch.
    """

    def __init__(self, sampler: ShardedBatchSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):  # type: ignore[no-untyped-def]
        epoch = self.sampler.epoch
        for batch in self.sampler:
            yield [(epoch, i) for i in batch]
