from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from vitlab.evaluation.classification import confusion_matrix, evaluate_classifier, topk_correct


def test_topk_matches_loop() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(50, 7), torch.randint(0, 7, (50,))
    got = topk_correct(logits, labels, ks=(1, 3, 5))
    for k in (1, 3, 5):
        naive = sum(int(labels[i]) in sorted(range(7), key=lambda c: -float(logits[i, c]))[:k] for i in range(50))
        assert got[k] == naive


def test_confusion_matrix_matches_loop() -> None:
    preds, labels = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 0, 2])
    cm = confusion_matrix(preds, labels, 3)
    naive = torch.zeros(3, 3, dtype=torch.long)
    for p, t in zip(preds.tolist(), labels.tolist()):
        naive[t, p] += 1
    assert torch.equal(cm, naive)


def test_evaluate_classifier_on_a_fixed_model() -> None:
    class Oracle(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # predicts the class stored in pixel (0, 0), except class 2 which it confuses with 0
            c = x[:, 0, 0, 0].long()
            c = torch.where(c == 2, torch.zeros_like(c), c)
            return torch.nn.functional.one_hot(c, 4).float() * 10

    items = [{"image": torch.full((1, 2, 2), float(i % 4)), "label": i % 4} for i in range(20)]
    metrics = evaluate_classifier(Oracle(), DataLoader(items, batch_size=6), None, 4, return_confusion=True)
    assert metrics["top1"] == 75.0 and metrics["top5"] == 100.0
    assert metrics["confusion"][2, 0] == 5
