import torch
from torch import nn

from vitlab.evaluation.robust import accuracy, collect, robust_accuracy_pgd


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_pgd_robust_accuracy_bounded_by_clean_and_zero_budget_equals_clean():
    torch.manual_seed(0)
    model = Linear()
    items = [{"image": torch.rand(3, 2, 2), "label": int(torch.randint(0, 3, ()))} for _ in range(40)]
    x, y = collect(items)
    assert x.shape == (40, 3, 2, 2) and y.shape == (40,)
    clean = 100 * accuracy(model, x, y)
    assert robust_accuracy_pgd(model, items, eps=0.0, steps=3) == clean
    robust = robust_accuracy_pgd(model, items, eps=0.3, steps=10)
    assert robust <= clean
    assert robust < clean or clean == 0
