"""Mugs losses and buffers against naive loops and the test values of specs/mugs.md §5."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.losses.mugs import (
    GroupDiscriminationLoss,
    KeyQueue,
    NeighbourMemory,
    QueueInfoNCELoss,
    crop_pairs,
    fifo_write,
    multicrop_clustering_loss,
    multicrop_info_nce,
)


def _pair_average(per_pair: dict[tuple[int, int], float], num_global: int = 2) -> float:
    large = [v for (t, s), v in per_pair.items() if s < num_global]
    small = [v for (t, s), v in per_pair.items() if s >= num_global]
    return 0.5 * sum(large) / len(large) + 0.5 * sum(small) / len(small)


def test_pairing_has_2_global_and_20_local_terms_and_never_the_same_index() -> None:
    pairs = crop_pairs(2, 12)
    assert len(pairs) == 22
    assert sum(s < 2 for _, s in pairs) == 2 and sum(s >= 2 for _, s in pairs) == 20
    assert all(t != s for t, s in pairs)
    assert (0, 1) in pairs and (1, 0) in pairs and (0, 0) not in pairs and (1, 1) not in pairs


def _naive_pairs(views: int, b: int, sample_loss) -> float:
    """Every (teacher view t, student view s ≠ t) pair: the mean over the batch of sample_loss(t·b + i, s·b + i)."""
    per_pair = {}
    for t in range(2):
        for s in range(views):
            if t == s:
                continue
            per_pair[(t, s)] = sum(sample_loss(t * b + i, s * b + i) for i in range(b)) / b
    return _pair_average(per_pair)


def _naive_info_nce(preds: torch.Tensor, targets: torch.Tensor, queue: torch.Tensor, tau: float, views: int) -> float:
    def sample_loss(t: int, s: int) -> float:
        logits = [float(preds[s] @ targets[t]) / tau] + [float(preds[s] @ q) / tau for q in queue]
        return -logits[0] + math.log(sum(math.exp(v) for v in logits))

    return _naive_pairs(views, preds.shape[0] // views, sample_loss)


def test_info_nce_matches_a_loop() -> None:
    torch.manual_seed(0)
    views, b = 4, 3
    preds = F.normalize(torch.randn(views * b, 8), dim=1)
    targets = F.normalize(torch.randn(2 * b, 8), dim=1)
    queue = F.normalize(torch.randn(16, 8), dim=1)
    got = multicrop_info_nce(preds, targets, queue, 0.2, views)
    assert float(got) == pytest.approx(_naive_info_nce(preds, targets, queue, 0.2, views), rel=1e-5)


def test_info_nce_spec_values() -> None:
    torch.manual_seed(0)
    queue = F.normalize(torch.randn(65536, 256), dim=1)
    preds = F.normalize(torch.randn(3 * 16, 256), dim=1)
    targets = F.normalize(torch.randn(2 * 16, 256), dim=1)
    random_loss = float(multicrop_info_nce(preds, targets, queue, 0.2, 3))
    assert random_loss == pytest.approx(11.13, abs=0.05)
    # student = teacher: ln(sum exp(s/τ)) − 1/τ ≈ 6.14
    same = F.normalize(torch.randn(16, 256), dim=1)
    equal_loss = float(multicrop_info_nce(torch.cat([same, same]), torch.cat([same, same]), queue, 0.2, 2))
    assert equal_loss == pytest.approx(6.14, abs=0.05)


def _naive_clustering(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, tt: float, ts: float,
                      views: int) -> float:
    def sample_loss(t: int, s: int) -> float:
        q = torch.softmax((teacher[t] - center[0]) / tt, dim=0)
        return float(-(q * torch.log_softmax(student[s] / ts, dim=0)).sum())

    return _naive_pairs(views, student.shape[0] // views, sample_loss)


def test_clustering_loss_matches_a_loop_and_is_ln_p_for_uniform_outputs() -> None:
    torch.manual_seed(0)
    student, teacher, center = torch.randn(4 * 3, 10), torch.randn(2 * 3, 10), torch.randn(1, 10)
    got = multicrop_clustering_loss(student, teacher, center, 0.04, 0.1, 4)
    assert float(got) == pytest.approx(_naive_clustering(student, teacher, center, 0.04, 0.1, 4), rel=1e-5)
    uniform = multicrop_clustering_loss(torch.zeros(12 * 2, 65536), torch.zeros(2 * 2, 65536),
                                        torch.zeros(1, 65536), 0.04, 0.1, 12)
    assert float(uniform) == pytest.approx(math.log(65536), abs=1e-4)  # 11.09


def test_fifo_queue_keeps_the_newest_keys_before_the_pointer_and_wraps() -> None:
    queue = KeyQueue(12, 4)
    keys = [torch.full((4, 4), float(i)) for i in range(1, 5)]
    for n, k in enumerate(keys[:2], start=1):
        queue.enqueue(k)
        ptr = int(queue.pointer)
        assert ptr == 4 * n
        assert torch.equal(queue.keys[ptr - 4:ptr], k)
    queue.enqueue(keys[2])
    assert int(queue.pointer) == 0 and torch.equal(queue.keys[8:12], keys[2])
    queue.enqueue(keys[3])  # wrapped: the oldest keys are replaced first
    assert torch.equal(queue.keys[0:4], keys[3]) and torch.equal(queue.keys[4:8], keys[1])
    with pytest.raises(ValueError, match="not divisible by the global batch 5"):
        queue.enqueue(torch.zeros(5, 4))


def test_fifo_write_wraps_and_can_reproduce_the_official_pointer_skip() -> None:
    buffer, pointer = torch.zeros(10, 1), torch.tensor([8])
    fifo_write(buffer, pointer, torch.tensor([[1.0], [2.0], [3.0]]))
    assert buffer[8:, 0].tolist() == [1.0, 2.0] and buffer[0, 0] == 3.0 and int(pointer) == 1
    buffer, pointer = torch.zeros(10, 1), torch.tensor([0])
    fifo_write(buffer, pointer, torch.ones(3, 1), reproduce_pointer_skip=True)
    assert int(pointer) == 6  # slots 3..5 are skipped, as in the official memory


def test_top_k_finds_a_planted_vector_and_student_memory_takes_only_weak_rows() -> None:
    torch.manual_seed(0)
    memory = NeighbourMemory(64, 16, top_k=3)
    planted = torch.randn(16)
    memory.bank[37] = 5.0 * planted  # cosine ignores the scale
    memory.bank[11] = planted + 0.05 * torch.randn(16)
    index = memory.neighbour_index(planted.unsqueeze(0))
    assert index[0, 0] == 37 and index[0, 1] == 11
    assert memory.neighbours(planted.unsqueeze(0)).shape == (1, 3, 16)
    before = memory.bank.clone()
    rows = torch.arange(4 * 16, dtype=torch.float32).view(4, 16)
    written = memory.write(rows, torch.tensor([True, False, False, True]))
    assert written == 2 and int(memory.pointer) == 2
    assert torch.equal(memory.bank[0], rows[0]) and torch.equal(memory.bank[1], rows[3])
    assert torch.equal(memory.bank[2:], before[2:])


def test_center_update_and_queue_losses_update_after_the_loss() -> None:
    torch.manual_seed(0)
    loss = GroupDiscriminationLoss(6)
    loss.center.copy_(torch.randn(1, 6))
    old = loss.center.clone()
    teacher = torch.randn(2 * 4, 6)
    loss(torch.randn(3 * 4, 6), teacher, 0.04, 3)
    torch.testing.assert_close(loss.center, 0.9 * old + 0.1 * teacher.mean(0, keepdim=True))

    nce = QueueInfoNCELoss(8, 16, 0.2)
    queue_before = nce.queue.keys.clone()
    targets = F.normalize(torch.randn(2 * 4, 8), dim=1)
    preds = F.normalize(torch.randn(3 * 4, 8), dim=1)
    value = nce(preds, targets, 3)
    # the loss used the queue from before the update; both teacher views were then enqueued in order
    assert float(value) == pytest.approx(float(multicrop_info_nce(preds, targets, queue_before, 0.2, 3)))
    torch.testing.assert_close(nce.queue.keys[:8], targets)
    assert int(nce.queue.pointer) == 8
