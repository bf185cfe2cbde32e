"""Zero-shot metrics (specs/transzero.md §2.5, §5) against loops written from the official evaluation."""

from __future__ import annotations

import pytest
import torch

from vitlab.evaluation.zsl import calibrated_stacking, czsl_accuracy, harmonic_mean, per_class_accuracy, zsl_metrics


def _loop_per_class(pred, labels, classes):
    accs = []
    for c in classes.tolist():
        idx = [i for i in range(len(labels)) if int(labels[i]) == c]
        accs.append(sum(int(pred[i]) == c for i in idx) / len(idx))
    return sum(accs) / len(accs)


@pytest.mark.parametrize("u,s,h", [(67.5, 73.6, 70.42), (48.6, 37.8, 42.52), (64.6, 82.7, 72.54)])
def test_harmonic_mean_of_the_paper(u: float, s: float, h: float) -> None:
    assert harmonic_mean(u, s) == pytest.approx(h, abs=0.005)


def test_per_class_mean_differs_from_plain_accuracy_on_imbalanced_data() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    pred = torch.zeros(100, dtype=torch.long)  # always class 0
    assert (pred == labels).float().mean().item() == pytest.approx(0.9)
    assert per_class_accuracy(pred, labels, torch.tensor([0, 1])) == pytest.approx(0.5)


def test_metrics_match_loops() -> None:
    torch.manual_seed(0)
    seen, unseen = torch.tensor([0, 2, 3, 5]), torch.tensor([1, 4])
    seen_labels = seen[torch.randint(0, 4, (40,))]
    unseen_labels = unseen[torch.randint(0, 2, (30,))]
    seen_scores, unseen_scores = torch.randn(40, 6), torch.randn(30, 6)
    m = zsl_metrics(seen_scores, seen_labels, unseen_scores, unseen_labels, seen, unseen)
    s = _loop_per_class(seen_scores.argmax(1), seen_labels, seen)
    u = _loop_per_class(unseen_scores.argmax(1), unseen_labels, unseen)
    # CZSL: the argmax over the unseen columns only
    czsl_pred = torch.tensor([[1, 4][int(torch.argmax(row[[1, 4]]))] for row in unseen_scores])
    assert m["S"] == pytest.approx(100 * s) and m["U"] == pytest.approx(100 * u)
    assert m["acc"] == pytest.approx(100 * _loop_per_class(czsl_pred, unseen_labels, unseen))
    assert m["H"] == pytest.approx(100 * 2 * u * s / (u + s))
    assert czsl_accuracy(unseen_scores, unseen_labels, unseen) == pytest.approx(m["acc"] / 100)


def test_calibrated_stacking_shifts_seen_columns() -> None:
    scores = torch.zeros(2, 4)
    out = calibrated_stacking(scores, torch.tensor([0, 2]), 2.0)
    assert torch.equal(out, torch.tensor([[-2.0, 0, -2, 0], [-2, 0, -2, 0]]))
    assert torch.equal(scores, torch.zeros(2, 4))
    # γ large enough sends every GZSL prediction to an unseen class
    m = zsl_metrics(torch.randn(8, 4), torch.tensor([0, 2] * 4), torch.randn(8, 4), torch.tensor([1, 3] * 4),
                    torch.tensor([0, 2]), torch.tensor([1, 3]), gamma=100.0)
    assert m["S"] == 0.0 and m["H"] == 0.0
