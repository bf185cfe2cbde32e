"""Few-shot episodes: an n-way, k-shot, q-query sampler that gives the same episodes on any number of processes.

specs/sun.md §2.5, §2.7 and §5 ("Episode sampler"). Episode ``e`` of a run is a pure function of
(seed, epoch, e): its classes are the ``ways`` classes with the smallest 64-bit hash of (seed, epoch, e, class), and
the images of each class the ``shots + queries`` members with the smallest hash of (seed, epoch, e, image index).
Nothing depends on a generator's state, the process count or the numpy version, so rank r of W processes takes the
episodes r, r + W, r + 2W, ... and together they hold exactly the episodes of one process.

Layout of one episode (the order of :func:`sample_episodes` and of the sampler's index lists): class-major,
``ways`` blocks of ``shots + queries`` dataset indices, the first ``shots`` of a block the support images. The
position of a class in the episode is its episode label (0..ways-1); the class order is itself random.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from vitlab.data.dataset import DataError

# Stream tags, so that class keys and image keys of the same episode are independent hashes.
_CLASS_STREAM = 0x434C415353  # "CLASS"
_IMAGE_STREAM = 0x494D414745  # "IMAGE"
_CHUNK = 256  # episodes sampled per vectorised block (bounds the (episodes, ways, members) key array)


@dataclass(frozen=True)
class EpisodeShape:
    """The shape of an episode: ``ways`` classes, ``shots`` support and ``queries`` query images per class."""

    ways: int
    shots: int
    queries: int

    @property
    def per_class(self) -> int:
        return self.shots + self.queries

    @property
    def size(self) -> int:
        return self.ways * self.per_class

    def check(self) -> None:
        for name in ("ways", "shots", "queries"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DataError(f"episodes.{name}: got {value!r}, expected an integer >= 1")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): a fixed, well-mixed 64-bit hash."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def episode_keys(seed: int, epoch: int, stream: int, episode_ids: np.ndarray, items: np.ndarray) -> np.ndarray:
    """uint64 hash keys of (seed, epoch, stream, episode, item); ``items`` (E or 1, ...) pairs with
    ``episode_ids`` (E,) along its first axis; returns (E, ...)."""
    head = np.array([seed & (2**64 - 1)], dtype=np.uint64)
    for value in (epoch, stream):
        head = _mix64(head ^ np.uint64(value & (2**64 - 1)))
    per_episode = _mix64(head ^ episode_ids.astype(np.uint64))  # (E,)
    shape = (-1,) + (1,) * (items.ndim - 1)
    return _mix64(per_episode.reshape(shape) ^ items.astype(np.uint64))


def class_members(targets: Sequence[int] | np.ndarray | Tensor) -> dict[int, np.ndarray]:
    """Dataset indices of every class, ascending: {label: int64 array}."""
    labels = np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    bounds = list(starts[1:]) + [len(order)]
    return {int(c): order[s:e] for c, s, e in zip(classes, starts, bounds, strict=True)}


def check_episode_source(members: Mapping[int, np.ndarray], shape: EpisodeShape,
                         class_names: Sequence[str] | None = None, source: str = "episodes") -> None:
    """A one-line :class:`DataError` when there are fewer classes than ways or a class has too few images."""
    shape.check()
    if len(members) < shape.ways:
        raise DataError(f"{source}: {len(members)} classes, fewer than the {shape.ways} ways an episode needs")
    for label, indices in members.items():
        if len(indices) < shape.per_class:
            name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else label
            raise DataError(f"{source}: class {name!r} has {len(indices)} images, fewer than shots + queries = "
                            f"{shape.shots} + {shape.queries}")


def sample_episodes(members: Mapping[int, np.ndarray], shape: EpisodeShape, episode_ids: Sequence[int] | np.ndarray,
                    seed: int, epoch: int = 0) -> Tensor:
    """Dataset indices of the episodes ``episode_ids``: int64 (len(episode_ids), ways, shots + queries).

    ``members`` is :func:`class_members` of the split (only its classes are drawn). Within a class block the first
    ``shots`` entries are the support images, the rest the queries; they are distinct, so support and query never
    overlap. Vectorised over episodes: no Python loop per episode or per class.
    """
    check_episode_source(members, shape)
    labels = np.array(sorted(members), dtype=np.int64)
    counts = np.array([len(members[c]) for c in labels], dtype=np.int64)
    table = np.full((len(labels), int(counts.max())), -1, dtype=np.int64)  # (C, max members), -1 = padding
    for row, label in enumerate(labels):
        table[row, :counts[row]] = members[int(label)]
    ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
    out = np.empty((len(ids), shape.ways, shape.per_class), dtype=np.int64)
    for start in range(0, len(ids), _CHUNK):
        block = ids[start:start + _CHUNK]
        class_keys = episode_keys(seed, epoch, _CLASS_STREAM, block, labels[None])  # (e, C)
        rows = np.argsort(class_keys, axis=1, kind="stable")[:, :shape.ways]  # (e, ways) rows of `table`
        candidates = table[rows]  # (e, ways, M)
        keys = episode_keys(seed, epoch, _IMAGE_STREAM, block, np.maximum(candidates, 0))
        keys[candidates < 0] = np.iinfo(np.uint64).max  # padding sorts last; counts >= per_class keeps it out
        if keys.shape[2] > shape.per_class:  # the per_class smallest keys, then in key order (ties: ~2^-64)
            smallest = np.argpartition(keys, shape.per_class - 1, axis=2)[:, :, :shape.per_class]
            candidates = np.take_along_axis(candidates, smallest, axis=2)
            keys = np.take_along_axis(keys, smallest, axis=2)
        pick = np.argsort(keys, axis=2, kind="stable")[:, :, :shape.per_class]
        out[start:start + len(block)] = np.take_along_axis(candidates, pick, axis=2)
    return torch.from_numpy(out)


def rank_episode_ids(episodes: int, rank: int = 0, world_size: int = 1, pad: bool = False) -> list[int]:
    """The episode ids of process ``rank``: rank, rank + W, ... below ``episodes``.

    With ``pad`` every rank gets ceil(episodes / W) ids, the short ranks repeating their own first episodes (as
    torch's DistributedSampler pads), so that training steps stay in lock-step; evaluation leaves ``pad`` off so
    that every episode counts exactly once.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    ids = list(range(rank, episodes, world_size))
    if pad:
        per_rank = -(-episodes // world_size)
        while ids and len(ids) < per_rank:
            ids += ids[:per_rank - len(ids)]
    return ids


def _process_group() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpisodeBatchSampler(Sampler[list[int]]):
    """A batch sampler of episodes for a ``DataLoader``: each batch is ``episodes_per_batch`` episodes, flattened.

    Args:
        targets: the label of every dataset item (the split's ``targets``).
        shape: ways, shots, queries.
        episodes: episodes per epoch over all processes.
        seed: the explicit seed; episodes of epoch ``e`` (see :meth:`set_epoch`) are a function of (seed, e).
        episodes_per_batch: episodes stacked in one batch (8 in SUN's meta-tuning, specs/sun.md §2.5).
        rank, world_size: this process's share (default: the running process group, else 0 of 1).
        pad: give every rank the same number of episodes (training); off for evaluation.

    Pair it with :func:`collate_episodes`.
    """

    def __init__(self, targets: Sequence[int] | np.ndarray | Tensor, shape: EpisodeShape, episodes: int, seed: int,
                 episodes_per_batch: int = 1, rank: int | None = None, world_size: int | None = None,
                 pad: bool = False, class_names: Sequence[str] | None = None) -> None:
        if episodes < 1 or episodes_per_batch < 1:
            raise DataError(f"episodes: got {episodes} episodes of {episodes_per_batch} per batch, expected >= 1 each")
        self.members = class_members(targets)
        check_episode_source(self.members, shape, class_names)
        group_rank, group_size = _process_group()
        self.rank = group_rank if rank is None else rank
        self.world_size = group_size if world_size is None else world_size
        self.shape, self.episodes, self.seed = shape, episodes, seed
        self.episodes_per_batch, self.pad = episodes_per_batch, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the episodes of ``epoch`` (training); evaluation keeps epoch 0 so its episodes never change."""
        self.epoch = epoch

    def episode_ids(self) -> list[int]:
        return rank_episode_ids(self.episodes, self.rank, self.world_size, self.pad)

    def __len__(self) -> int:
        return -(-len(self.episode_ids()) // self.episodes_per_batch)

    def __iter__(self) -> Iterator[list[int]]:
        ids = self.episode_ids()
        for start in range(0, len(ids), self.episodes_per_batch):
            batch = sample_episodes(self.members, self.shape, ids[start:start + self.episodes_per_batch], self.seed,
                                    self.epoch)
            yield batch.reshape(-1).tolist()


def collate_episodes(items: Sequence[dict[str, Any]], shape: EpisodeShape) -> dict[str, Tensor]:
    """Stack the items of one sampler batch into episodes.

    Returns ``support`` (B, ways·shots, C, H, W), ``query`` (B, ways·queries, C, H, W), ``support_label`` /
    ``query_label`` (B, ·) episode labels in 0..ways-1, and ``support_class`` / ``query_class`` (the dataset labels).
    Use ``functools.partial(collate_episodes, shape=shape)`` as the loader's ``collate_fn``.
    """
    if len(items) % shape.size:
        raise DataError(f"collate_episodes: {len(items)} items is not a multiple of the episode size {shape.size}")
    images = torch.stack([item["image"] for item in items])
    images = images.reshape(-1, shape.ways, shape.per_class, *images.shape[1:])
    classes = torch.as_tensor([int(item["label"]) for item in items]).reshape(-1, shape.ways, shape.per_class)
    if not bool((classes == classes[:, :, :1]).all()):
        raise DataError("collate_episodes: a class block mixes labels; use EpisodeBatchSampler's index order")
    episode_label = torch.arange(shape.ways).view(1, shape.ways, 1).expand_as(classes)
    s = shape.shots

    def flat(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], -1, *t.shape[3:])

    return {
        "support": flat(images[:, :, :s]), "query": flat(images[:, :, s:]),
        "support_label": flat(episode_label[:, :, :s]), "query_label": flat(episode_label[:, :, s:]),
        "support_class": flat(classes[:, :, :s]), "query_class": flat(classes[:, :, s:]),
    }
