"""Word-substitution attacks on text classifiers (specs/rift.md §2.5, §6), over the substitution slots of
:mod:`vitlab.data.text` (slot 0 = the original word, slots 1.. = its synonyms; the defender's dictionary):

* :func:`exact_worst_case`: every combination of substitutions of a sentence, scored in a few batched forward passes
  (the strongest attack over the dictionary; robust = every combination is classified correctly);
* :func:`pwws`: probability-weighted word saliency (Ren et al. 2019) with the synonym dictionary instead of WordNet,
  "NULL" = UNK, swaps applied greedily in score order until the label flips, no cap on the perturbation ratio;
* :func:`genetic`: the genetic attack (Alzantot et al. 2018, Jia et al. 2019's faster variant), population and
  iterations configurable; LM constraint: off (no language-model scores are read);
* :func:`ascc_attack_ids`: ASCC with the CE objective, then the argmax slot per position as discrete text (§2.3).

A model here is a :class:`~vitlab.methods.rift.TextClassifier`-like callable ``model(ids, mask, types) -> logits``.
An example misclassified before the attack counts as a failure (not robust).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

TEXT_ATTACKS = ("exact", "pwws", "genetic", "ascc")


def _logits(model: nn.Module, ids: Tensor, mask: Tensor, types: Tensor, batch_size: int) -> Tensor:
    return torch.cat([model(ids[i:i + batch_size], mask[i:i + batch_size], types[i:i + batch_size])
                      for i in range(0, ids.shape[0], batch_size)])


def _margin(logits: Tensor, y: Tensor | int) -> Tensor:
    """logit_y − max of the other logits; < 0 means misclassified (p(y) < 0.5 for two classes)."""
    y = torch.as_tensor(y).expand(logits.shape[0]) if not torch.is_tensor(y) or y.dim() == 0 else y
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    return true - other


def slot_counts(sub_mask: Tensor) -> Tensor:
    """Used slots per position (L,) of one example (1 where nothing may be substituted)."""
    return sub_mask.sum(-1).clamp_min(1)


def num_combinations(sub_mask: Tensor) -> int:
    """How many sentences one example's substitutions allow."""
    return int(math.prod(int(c) for c in slot_counts(sub_mask)))


def enumerate_combinations(ids: Tensor, sub_ids: Tensor, sub_mask: Tensor) -> Tensor:
    """All substituted versions of one example, (N, L), in mixed-radix order (row 0 = the original)."""
    counts = slot_counts(sub_mask)
    positions = torch.nonzero(counts > 1).flatten()
    radices = counts[positions]
    total = int(torch.prod(radices)) if len(positions) else 1
    out = ids.unsqueeze(0).repeat(total, 1)
    code = torch.arange(total)
    for p, r in zip(positions.tolist(), radices.tolist()):  # one vectorised assignment per substitutable position
        out[:, p] = sub_ids[p, code % r]
        code = code // r
    return out


@torch.no_grad()
def exact_worst_case(model: nn.Module, data: Mapping[str, Tensor], batch_size: int = 512,
                     max_combinations: int = 4096) -> dict[str, Any]:
    """Exact worst-case robust accuracy: every combination of every sentence, packed into chunks of ``batch_size``
    sentences across examples. Returns ``clean``, ``robust`` (bool per example) and ``combinations``."""
    n = data["input_ids"].shape[0]
    combos = [num_combinations(data["sub_mask"][i]) for i in range(n)]
    too_many = [i for i, c in enumerate(combos) if c > max_combinations]
    if too_many:
        raise ValueError(f"exact attack: example {too_many[0]} has {combos[too_many[0]]} combinations, more than "
                         f"--max-combinations {max_combinations} (use pwws or genetic)")
    rows = torch.cat([enumerate_combinations(data["input_ids"][i], data["sub_ids"][i], data["sub_mask"][i])
                      for i in range(n)])
    owner = torch.repeat_interleave(torch.arange(n), torch.tensor(combos))
    mask, types = data["attention_mask"][owner], data["token_type_ids"][owner]
    length = int(data["attention_mask"].sum(1).max())
    correct = torch.empty(rows.shape[0], dtype=torch.bool)
    for i in range(0, rows.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        logits = model(rows[sl, :length], mask[sl, :length], types[sl, :length])
        correct[sl] = logits.argmax(1) == data["label"][owner[sl]]
    robust = torch.ones(n, dtype=torch.bool).scatter_reduce(0, owner, correct, reduce="amin")
    first = torch.cumsum(torch.tensor([0] + combos[:-1]), 0)
    return {"clean": correct[first], "robust": robust, "combinations": combos}


@torch.no_grad()
def pwws(model: nn.Module, example: Mapping[str, Tensor], unk_id: int, batch_size: int = 512
         ) -> tuple[bool, bool, Tensor, int]:
    """PWWS on one example (tensors without the batch axis). Returns (clean correct, robust, adversarial ids,
    words changed). Saliency = p(y | x) − p(y | x with the word replaced by UNK); each position's best swap is the
    synonym lowering p(y) most (ΔP); positions are taken in the order of softmax(saliency) · ΔP and swapped
    cumulatively until the label flips (all prefixes scored in one batched pass)."""
    ids, mask, types, y = example["input_ids"], example["attention_mask"], example["token_type_ids"], example["label"]
    sub_ids, sub_mask = example["sub_ids"], example["sub_mask"]
    length = int(mask.sum())
    ids, mask, types, sub_ids, sub_mask = ids[:length], mask[:length], types[:length], sub_ids[:length], \
        sub_mask[:length]
    rep = lambda t, k: t.unsqueeze(0).expand(k, -1)  # noqa: E731
    logits = model(ids[None], mask[None], types[None])
    p0 = logits.softmax(1)[0, y]
    if _margin(logits, y)[0] < 0:
        return False, False, ids, 0
    positions = torch.nonzero(sub_mask[:, 1:].sum(1) > 0).flatten()
    if len(positions) == 0:
        return True, True, ids, 0
    k = len(positions)
    blanked = ids.unsqueeze(0).repeat(k, 1)
    blanked[torch.arange(k), positions] = unk_id
    saliency = p0 - _logits(model, blanked, rep(mask, k), rep(types, k), batch_size).softmax(1)[:, y]
    cand_pos, cand_slot = torch.nonzero(sub_mask[positions, 1:], as_tuple=True)
    swapped = ids.unsqueeze(0).repeat(len(cand_pos), 1)
    words = sub_ids[positions[cand_pos], cand_slot + 1]
    swapped[torch.arange(len(cand_pos)), positions[cand_pos]] = words
    p_swap = _logits(model, swapped, rep(mask, len(cand_pos)), rep(types, len(cand_pos)), batch_size).softmax(1)[:, y]
    delta = p0 - p_swap
    best_delta = torch.full((k,), float("-inf")).scatter_reduce(0, cand_pos, delta, reduce="amax")
    is_best = delta == best_delta[cand_pos]
    best_word = torch.zeros(k, dtype=torch.long)
    best_word[cand_pos[is_best]] = words[is_best]
    score = torch.softmax(saliency, 0) * best_delta
    order = torch.argsort(score, descending=True)
    prefixes = ids.unsqueeze(0).repeat(k, 1)
    for j in range(k):  # prefix j has the first j + 1 swaps applied (k <= sentence length: a cheap tensor build)
        prefixes[j:, positions[order[j]]] = best_word[order[j]]
    flipped = _margin(_logits(model, prefixes, rep(mask, k), rep(types, k), batch_size), y) < 0
    if bool(flipped.any()):
        j = int(torch.nonzero(flipped)[0])
        return True, False, prefixes[j], j + 1
    return True, True, prefixes[-1], k


@torch.no_grad()
def genetic(model: nn.Module, example: Mapping[str, Tensor], population: int = 60, iterations: int = 40,
            generator: torch.Generator | None = None, batch_size: int = 512) -> tuple[bool, bool, Tensor]:
    """The genetic attack on one example: returns (clean correct, robust, best adversarial ids).

    Perturb = pick a random substitutable position, try every allowed word there, keep the one with the lowest
    margin; the population starts as ``population`` perturbations of the original; each iteration keeps the elite,
    samples parents ∝ sigmoid(−margin) (∝ 1 − p(y) for two classes), crosses them over position-wise and perturbs
    the children. Success: margin < 0 (p(y) < 0.5 for two classes)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    ids, mask, types, y = example["input_ids"], example["attention_mask"], example["token_type_ids"], example["label"]
    length = int(mask.sum())
    ids, mask, types = ids[:length], mask[:length], types[:length]
    sub_ids, sub_mask = example["sub_ids"][:length], example["sub_mask"][:length]
    binary = None

    def score(batch: Tensor) -> Tensor:
        logits = _logits(model, batch, mask.expand(batch.shape[0], -1), types.expand(batch.shape[0], -1), batch_size)
        nonlocal binary
        binary = logits.shape[1] == 2
        return logits if not binary else logits

    logits0 = score(ids[None])
    if _margin(logits0, y)[0] < 0:
        return False, False, ids
    positions = torch.nonzero(sub_mask[:, 1:].sum(1) > 0).flatten()
    if len(positions) == 0:
        return True, True, ids
    slots = sub_mask.shape[1]

    def perturb(members: Tensor) -> Tensor:
        """Each member: a random substitutable position, every allowed word there, the lowest-margin one kept."""
        m = members.shape[0]
        pos = positions[torch.randint(len(positions), (m,), generator=g)]
        cands = members.unsqueeze(1).repeat(1, slots, 1)  # (m, S, L)
        cands[torch.arange(m)[:, None], torch.arange(slots)[None], pos[:, None]] = sub_ids[pos]
        valid = sub_mask[pos].bool()  # (m, S)
        margins = _margin(score(cands.reshape(m * slots, -1)), y).reshape(m, slots)
        margins = margins.masked_fill(~valid, float("inf"))
        return cands[torch.arange(m), margins.argmin(1)]

    pop = perturb(ids.unsqueeze(0).repeat(population, 1))
    for _ in range(iterations):
        margins = _margin(score(pop), y)
        best = int(margins.argmin())
        if margins[best] < 0:
            return True, False, pop[best]
        fitness = torch.sigmoid(-margins)  # = 1 − p(y) for two classes
        probs = fitness / fitness.sum()
        p1 = torch.multinomial(probs, population - 1, replacement=True, generator=g)
        p2 = torch.multinomial(probs, population - 1, replacement=True, generator=g)
        take = torch.rand(population - 1, length, generator=g) < 0.5
        children = torch.where(take, pop[p1], pop[p2])
        pop = torch.cat([pop[best:best + 1], perturb(children)])
    margins = _margin(score(pop), y)
    best = int(margins.argmin())
    return True, bool(margins[best] >= 0), pop[best]


def ascc_attack_ids(model: nn.Module, batch: Mapping[str, Tensor], mcfg: Any) -> Tensor:
    """ASCC evaluation attack (§2.3): CE-objective hull weights, then the argmax slot per position as text (B, L)."""
    from vitlab.methods.rift import ascc_weights

    w = ascc_weights(model, batch, "ce", mcfg.ascc_steps, mcfg.ascc_lr, mcfg.ascc_weight_decay,  # type: ignore[arg-type]
                     mcfg.entropy_weight, generator=torch.Generator().manual_seed(0))
    return batch["sub_ids"].gather(2, w.argmax(-1, keepdim=True)).squeeze(-1)


# ---- `vitlab attack` on a text checkpoint --------------------------------------------------------------------------
def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("text attacks (exact, pwws, genetic, ascc)")
    g.add_argument("--split", default="test", help="text: the split attacked (test or val)")
    g.add_argument("--population", type=int, default=60, help="genetic: population (60 official, 20 small plan)")
    g.add_argument("--iterations", type=int, default=40, help="genetic: iterations (40 official, 10 small plan)")
    g.add_argument("--max-combinations", type=int, default=4096, help="exact: refuse sentences with more")


def _bar(total: int, label: str) -> Any:
    import sys

    if not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    bar.start()
    bar.add_task(label, total=total)
    return bar


def attack_text_model(model: nn.Module, data: Mapping[str, Tensor], attack: str, unk_id: int, mcfg: Any = None,
                      population: int = 60, iterations: int = 40, seed: int = 0, batch_size: int = 512,
                      max_combinations: int = 4096) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` (eval mode) under one text attack on ``data`` (stacked examples)."""
    model.eval()
    n = int(data["label"].shape[0])
    start = time.perf_counter()
    report: dict[str, Any] = {"n": n, "attack": attack, "seed": seed}
    if attack == "exact":
        res = exact_worst_case(model, data, batch_size, max_combinations)
        clean, robust = res["clean"], res["robust"]
        report["combinations_mean"] = float(sum(res["combinations"]) / max(n, 1))
        report["combinations_max"] = int(max(res["combinations"], default=0))
    elif attack == "ascc":
        from vitlab.methods.rift import trim_batch

        clean_l, robust_l = [], []
        for i in range(0, n, 64):
            b = trim_batch({k: v[i:i + 64] for k, v in data.items()})
            with torch.no_grad():
                ok = model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).argmax(1) == b["label"]
            adv = ascc_attack_ids(model, b, mcfg)
            with torch.no_grad():
                rob = model(adv, b["attention_mask"], b["token_type_ids"]).argmax(1) == b["label"]
            clean_l.append(ok)
            robust_l.append(ok & rob)
        clean, robust = torch.cat(clean_l), torch.cat(robust_l)
    else:
        g = torch.Generator().manual_seed(seed)
        clean, robust = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        changed = []
        bar = _bar(n, attack)
        for i in range(n):
            ex = {k: v[i] for k, v in data.items()}
            if attack == "pwws":
                c, r, _, k = pwws(model, ex, unk_id, batch_size)
                changed.append(k)
            else:
                c, r, _ = genetic(model, ex, population, iterations, g, batch_size)
            clean[i], robust[i] = c, r
            if bar is not None:
                bar.update(bar.task_ids[0], advance=1)
        if bar is not None:
            bar.stop()
        if attack == "genetic":
            report.update({"population": population, "iterations": iterations, "lm_constraint": "off"})
    seconds = time.perf_counter() - start
    report.update({"clean_accuracy": float(clean.float().mean()), "robust_accuracy": float(robust.float().mean()),
                   "seconds": seconds, "sentences_per_s": n / max(seconds, 1e-9)})
    return report


def run_command(args: argparse.Namespace) -> int:
    """``vitlab attack --ckpt RUN/best.ckpt --attack pwws|genetic|exact|ascc [--n N]`` on a text checkpoint."""
    from vitlab.engine.checkpoint import atomic_write_bytes, load_method

    if args.ckpt is None:
        raise ValueError(f"--attack {args.attack}: give --ckpt PATH (a checkpoint of a text method)")
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n: got {args.n}, expected a number of examples >= 1")
    for key in ("population", "iterations"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key}: got {getattr(args, key)}, expected an integer >= 1")
    method, _ = load_method(args.ckpt)
    model = method.eval_model().eval()
    if not hasattr(model, "slot_embeddings"):
        raise ValueError(f"--attack {args.attack}: {args.ckpt} is not a text model (use pgd, apgd-ce or autoattack)")
    datasets = type(method).build_datasets(method.cfg)
    if args.split not in datasets or args.split == "train":
        raise ValueError(f"--split: {args.split!r} is not an evaluation split (available: "
                         f"{', '.join(k for k in datasets if k != 'train')})")
    tensors = datasets[args.split].tensors  # type: ignore[attr-defined]
    data = {k: v[: args.n] if args.n else v for k, v in tensors.items()}
    from vitlab.methods.rift import load_tokenizer

    unk = int(load_tokenizer(method.cfg.method.backbone).unk_token_id)
    report = attack_text_model(model, data, args.attack, unk, method.mcfg, args.population, args.iterations,
                               args.seed, min(args.batch_size, 512), args.max_combinations)
    report["source"] = str(args.ckpt)
    print(f"{args.ckpt}: {report['n']} {args.split} examples, attack {args.attack}, seed {args.seed}"
          + (f", population {args.population}, {args.iterations} iterations, LM constraint: off"
             if args.attack == "genetic" else ""))
    print(f"  clean accuracy   {100 * report['clean_accuracy']:6.2f}%")
    print(f"  robust accuracy  {100 * report['robust_accuracy']:6.2f}%   ({report['sentences_per_s']:.2f} sentences/s)")
    out = Path(args.out) if args.out else Path(args.ckpt).with_name(f"attack_{args.attack}.json")
    atomic_write_bytes(json.dumps(report, indent=2).encode(), out)
    print(f"  report: {out}")
    return 0
