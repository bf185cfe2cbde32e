from __future__ import annotations

import torch

from vitlab.engine.seeding import SeededItems, ShardedBatchSampler


def test_two_ranks_partition_the_single_process_batches() -> None:
    single = ShardedBatchSampler(50, batch_size=8, rank=0, world_size=1, seed=3)
    ranks = [ShardedBatchSampler(50, batch_size=4, rank=r, world_size=2, seed=3) for r in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(2)
    one = list(single)
    two = list(zip(*[list(r) for r in ranks]))
    assert len(one) == len(two) == 6
    for b1, (a, b) in zip(one, two):
        assert b1 == a + b


def test_resume_position_skips_without_changing_order() -> None:
    s = ShardedBatchSampler(40, batch_size=5, seed=1)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, start_batch=3)
    assert list(s) == full[3:] and len(s) == len(full) - 3
    s.set_epoch(2)
    assert list(s) != full


class _Noisy(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> float:
        return float(torch.rand(()))


def test_items_are_seeded_by_epoch_and_index_and_leave_global_rng_alone() -> None:
    ds = SeededItems(_Noisy(), seed=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = [ds[i] for i in range(4)]
    assert torch.equal(torch.get_rng_state(), before)
    assert first == [ds[i] for i in range(4)]
    assert len(set(first)) == 4
    ds.set_epoch(1)
    assert [ds[i] for i in range(4)] != first
