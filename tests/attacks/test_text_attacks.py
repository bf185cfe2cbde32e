"""Word-substitution attacks: exact enumeration against a naive itertools loop, PWWS stops at the first flip, the
genetic attack stays inside the neighbour sets, a misclassified example is a failure."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from vitlab.attacks.text import attack_text_model, enumerate_combinations, exact_worst_case, genetic, pwws

A = {7, 8, 9}  # "negative-looking" substitutes: each lowers the class-0 logit by 1


class CountModel(nn.Module):
    """logits = [1.5 − #tokens in A, 0]: two substitutions into A flip a class-0 example."""

    def forward(self, ids, mask=None, types=None):
        n_a = sum((ids == a).sum(1) for a in A).float()
        return torch.stack([1.5 - n_a, torch.zeros_like(n_a)], 1)


def example(label=0):
    ids = torch.tensor([1, 2, 3, 4, 5, 0])
    mask = torch.tensor([1, 1, 1, 1, 1, 0])
    sub_ids = ids[:, None].repeat(1, 3)
    sub_mask = torch.zeros(6, 3, dtype=torch.long)
    sub_mask[:5, 0] = 1
    for pos, subs in ((1, [7, 20]), (2, [8]), (3, [9, 21])):
        sub_ids[pos, 1:1 + len(subs)] = torch.tensor(subs)
        sub_mask[pos, 1:1 + len(subs)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(6, dtype=torch.long),
            "sub_ids": sub_ids, "sub_mask": sub_mask, "label": torch.tensor(label)}


class RandomModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(32, 4)
        self.lin = nn.Linear(4, 2)

    def forward(self, ids, mask=None, types=None):
        return self.lin(torch.tanh(self.emb(ids)).sum(1))


def test_enumeration_and_exact_match_naive_loop():
    torch.manual_seed(0)
    model = RandomModel().eval()
    exs = [example(0), example(1)]
    data = {k: torch.stack([e[k] for e in exs]) for k in exs[0]}
    res = exact_worst_case(model, data, batch_size=5)
    for i, ex in enumerate(exs):
        options = [ex["sub_ids"][p][ex["sub_mask"][p].bool()].tolist() or [int(ex["input_ids"][p])] for p in range(6)]
        rows = enumerate_combinations(ex["input_ids"], ex["sub_ids"], ex["sub_mask"])
        assert sorted(map(tuple, rows.tolist())) == sorted(itertools.product(*options))  # 3 * 2 * 3 = 18
        ok = [int(model(torch.tensor([c]))[0].argmax()) == int(ex["label"]) for c in itertools.product(*options)]
        assert bool(res["robust"][i]) == all(ok)
        assert bool(res["clean"][i]) == ok[0] and res["combinations"][i] == 18


def test_pwws_stops_at_the_first_flip():
    clean, robust, adv, changed = pwws(CountModel(), example(0), unk_id=30)
    assert clean and not robust and changed == 2  # two swaps flip it; the third is not applied
    assert int(sum((adv == a).sum() for a in A)) == 2


def test_genetic_stays_in_the_neighbour_sets_and_succeeds():
    ex = example(0)
    clean, robust, adv = genetic(CountModel(), ex, population=6, iterations=5,
                                 generator=torch.Generator().manual_seed(0))
    assert clean and not robust and len(adv) == 5  # the words of the example, padding cut
    for p in range(len(adv)):
        assert int(adv[p]) in ex["sub_ids"][p][ex["sub_mask"][p].bool()].tolist() + [int(ex["input_ids"][p])]


def test_misclassified_examples_count_as_failures():
    data = {k: v[None] for k, v in example(1).items()}  # CountModel predicts 0: wrong before any attack
    for attack in ("exact", "pwws", "genetic"):
        report = attack_text_model(CountModel(), data, attack, unk_id=30, population=4, iterations=2)
        assert report["clean_accuracy"] == 0.0 and report["robust_accuracy"] == 0.0, attack
