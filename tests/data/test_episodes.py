"""The episodic sampler and its collate (specs/sun.md §5 "Episode sampler"); the digits few-shot splits (§6)."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from vitlab.config import DataConfig
from vitlab.data.build import build_dataset
from vitlab.data.dataset import DataError
from vitlab.data.episodes import (
    EpisodeBatchSampler,
    EpisodeShape,
    class_members,
    collate_episodes,
    rank_episode_ids,
    sample_episodes,
)

SHAPE = EpisodeShape(ways=5, shots=2, queries=3)


def _targets() -> list[int]:
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(12), [8, 9, 10, 11, 12, 13, 8, 9, 10, 11, 12, 5])).tolist()


def test_every_episode_has_distinct_classes_and_images_and_no_overlap() -> None:
    targets = _targets()
    members = {c: m for c, m in class_members(targets).items() if c != 11}  # class 11 (5 images) left out
    episodes = sample_episodes(members, SHAPE, range(300), seed=7)
    assert episodes.shape == (300, 5, 5)
    labels = torch.tensor(targets)[episodes]
    for e in range(300):
        classes = labels[e, :, 0].tolist()
        assert len(set(classes)) == 5 and 11 not in classes
        assert torch.all(labels[e] == labels[e, :, :1])  # a block is one class
        flat = episodes[e].flatten().tolist()
        assert len(set(flat)) == len(flat)  # support and query never share an image
    drawn = set(labels[:, :, 0].flatten().tolist())
    assert drawn == set(range(11))  # every class of the split shows up, none outside it


def test_deterministic_for_a_seed_and_different_for_another() -> None:
    members = class_members(_targets())
    a = sample_episodes(members, SHAPE, range(50), seed=3)
    assert torch.equal(a, sample_episodes(members, SHAPE, range(50), seed=3))
    assert not torch.equal(a, sample_episodes(members, SHAPE, range(50), seed=4))
    assert not torch.equal(a, sample_episodes(members, SHAPE, range(50), seed=3, epoch=1))
    # an episode depends on its id only, not on which others are drawn with it
    assert torch.equal(a[17:30], sample_episodes(members, SHAPE, range(17, 30), seed=3))


def test_images_are_uniform_over_a_class() -> None:
    members = class_members([0] * 10 + [1] * 10)
    episodes = sample_episodes(members, EpisodeShape(2, 1, 1), range(4000), seed=0)
    counts = np.bincount(episodes.flatten().numpy(), minlength=20)
    assert counts.min() > 0.9 * 800 and counts.max() < 1.1 * 800  # each image: in 2 of 10 picks of its class
    first = episodes[:, 0, 0]  # label order random too: class 0 first in about half the episodes
    assert 0.45 < float((first < 10).float().mean()) < 0.55


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_together_hold_the_single_process_episodes(world: int) -> None:
    targets = _targets()
    one = EpisodeBatchSampler(targets, SHAPE, episodes=10, seed=5, rank=0, world_size=1, class_names=None)
    single = list(one)
    shards = [list(EpisodeBatchSampler(targets, SHAPE, episodes=10, seed=5, rank=r, world_size=world))
              for r in range(world)]
    by_id = {}
    for r, shard in enumerate(shards):
        for ids, batch in zip(rank_episode_ids(10, r, world), shard, strict=True):
            by_id[ids] = batch
    assert [by_id[e] for e in range(10)] == single


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gloo_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sampler = EpisodeBatchSampler(_targets(), SHAPE, episodes=9, seed=5)  # rank and world from the group
        torch.save({"rank": sampler.rank, "batches": list(sampler)}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes: a few seconds on a quiet machine
def test_two_gloo_processes_hold_the_single_process_episodes(tmp_path: Path) -> None:
    mp.spawn(_gloo_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = list(EpisodeBatchSampler(_targets(), SHAPE, episodes=9, seed=5))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]
    merged = [ranks[e % 2]["batches"][e // 2] for e in range(9)]
    assert merged == single


def test_padding_keeps_ranks_in_step() -> None:
    assert rank_episode_ids(10, 2, 3) == [2, 5, 8]
    assert rank_episode_ids(10, 2, 3, pad=True) == [2, 5, 8, 2]
    assert rank_episode_ids(10, 0, 3, pad=True) == [0, 3, 6, 9]


def test_bad_sources_are_one_line_errors() -> None:
    with pytest.raises(DataError, match="class 'eleven' has 5 images, fewer than shots \\+ queries = 2 \\+ 4"):
        EpisodeBatchSampler(_targets(), EpisodeShape(5, 2, 4), 10, 0,
                            class_names=[str(i) for i in range(11)] + ["eleven"])
    with pytest.raises(DataError, match="3 classes, fewer than the 5 ways"):
        EpisodeBatchSampler([0, 1, 2] * 10, SHAPE, 10, 0)
    with pytest.raises(DataError, match="shots"):
        EpisodeShape(5, 0, 15).check()


def test_loader_and_collate_make_episode_tensors() -> None:
    targets = torch.tensor(_targets())
    images = targets.float().view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    dataset = [{"image": images[i], "label": int(targets[i])} for i in range(len(targets))]
    sampler = EpisodeBatchSampler(targets, SHAPE, episodes=6, seed=1, episodes_per_batch=4)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=functools.partial(collate_episodes, shape=SHAPE))
    batches = list(loader)
    assert len(batches) == len(sampler) == 2
    batch = batches[0]
    assert batch["support"].shape == (4, 10, 1, 4, 4) and batch["query"].shape == (4, 15, 1, 4, 4)
    assert batch["support_label"][0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert batch["query_label"][0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    # the image of item i is its label: the collate kept images and classes together
    assert torch.equal(batch["support"][:, :, 0, 0, 0].long(), batch["support_class"])
    assert torch.equal(batch["query"][:, :, 0, 0, 0].long(), batch["query_class"])
    # support and query of the same episode position share the class
    assert torch.equal(batch["support_class"][:, ::2], batch["query_class"][:, ::3])
    expected = sample_episodes(sampler.members, SHAPE, range(4), seed=1)
    assert torch.equal(batch["support_class"], targets[expected[:, :, :2]].flatten(1))


def test_digits_fewshot_splits() -> None:
    cfg = DataConfig(name="digits_fewshot")
    base, base_test, novel = (build_dataset(cfg, s, train=False) for s in ("base", "base_test", "novel"))
    assert base.classes == base_test.classes == ["0", "1", "2", "3", "4"]
    assert novel.classes == ["5", "6", "7", "8", "9"]
    assert set(base.targets) == set(novel.targets) == set(range(5))
    assert len(base) + len(base_test) + len(novel) == 1797
    assert build_dataset(cfg, "test", False).classes == novel.classes
    assert build_dataset(cfg, "train", False).classes == base.classes
    train_images = {tuple(base.images[i].flatten()[::37].tolist()) for i in range(len(base))}
    assert not any(tuple(base_test.images[i].flatten()[::37].tolist()) in train_images for i in range(len(base_test)))
    with pytest.raises(DataError, match="digits_fewshot: unknown split 'val'"):
        build_dataset(cfg, "val", False)
