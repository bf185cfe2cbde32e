"""Episodic few-shot evaluation on features computed once per image (specs/sun.md §2.7, §5 "Meta-Baseline", "95% CI").

:func:`embed_dataset` runs the backbone once over a split; :func:`evaluate_episodes` then draws the episodes of
:mod:`vitlab.data.episodes` as index tensors and scores all of them as batched tensor operations (blocks of episodes,
no Python loop per episode). Heads:

- ``cosine``: Meta-Baseline's classifier: L2-normalised mean of the support features against L2-normalised queries
  (the learnable temperature γ scales the logits and so never changes the arg-max: it is left out here).
- ``euclidean``: prototypical networks: minus the squared Euclidean distance to the mean support feature.
- ``logistic``: a multinomial logistic regression fitted on the support set of each episode (L2-normalised features,
  mean cross-entropy + ‖W‖² / (2·C·n), the bias not penalised, as scikit-learn's ``LogisticRegression(C)``),
  solved for all episodes at once by Nesterov gradient descent in the span of the support features.

Accuracies are per episode; :func:`confidence_interval` gives the 95% half-width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vitlab.data.episodes import EpisodeShape, check_episode_source, class_members, sample_episodes
from vitlab.data.loader import build_loader
from vitlab.errors import DataError

Head = Literal["cosine", "euclidean", "logistic"]
HEADS: tuple[Head, ...] = ("cosine", "euclidean", "logistic")
FeatureFn = Callable[[Tensor], Tensor]
_BLOCK = 250  # episodes scored per block: bounds the (block, ways, shots + queries, D) gather


@torch.no_grad()
def embed_dataset(feature_fn: FeatureFn, dataset: Dataset[dict[str, Any]], batch_size: int = 256,
                  device: torch.device | str = "cpu", num_workers: int | str = 0,
                  on_batch: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    """Every image of ``dataset`` through ``feature_fn`` ((B, C, H, W) in [0, 1] -> (B, D)), once, in order.

    ``on_batch(1)`` is called after every batch (a progress bar's advance).

    Returns (N, D) float32 features and (N,) int64 labels on the CPU; row i is dataset item i, so the indices of
    :func:`~vitlab.data.episodes.sample_episodes` address it directly.
    """
    loader = build_loader(dataset, num_workers, batch_size=batch_size, device=device)
    features, labels = [], []
    for batch in loader:
        features.append(feature_fn(batch["image"].to(device)).float().cpu())
        labels.append(torch.as_tensor(batch["label"]).long())
        if on_batch is not None:
            on_batch(1)
    if not features:
        raise DataError("embed_dataset: the dataset is empty; expected at least one image")
    return torch.cat(features), torch.cat(labels)


def split_episode_features(features: Tensor, episodes: Tensor, shots: int) -> tuple[Tensor, Tensor]:
    """Gather episode features: ``episodes`` (E, W, S + Q) indices into ``features`` (N, D) ->
    support (E, W, S, D), query (E, W, Q, D)."""
    gathered = features.index_select(0, episodes.reshape(-1)).view(*episodes.shape, features.shape[-1])
    return gathered[:, :, :shots], gathered[:, :, shots:]


def prototype_logits(support: Tensor, query: Tensor, metric: Literal["cosine", "euclidean"] = "cosine") -> Tensor:
    """Prototype classifier logits (E, W·Q, W) for support (E, W, S, D) and query (E, W, Q, D).

    cosine (Meta-Baseline, specs/sun.md §2.5): cos(normalise(mean support), query); euclidean (ProtoNet):
    −‖query − mean support‖².
    """
    prototypes = support.mean(dim=2)  # (E, W, D)
    queries = query.reshape(query.shape[0], -1, query.shape[-1])  # (E, W·Q, D)
    # Both as one batched product with the (few) prototypes, dividing or shifting by per-query norms afterwards,
    # so that no normalised or differenced copy of the (many) query features is written.
    if metric == "cosine":
        products = torch.bmm(queries, F.normalize(prototypes, dim=-1).transpose(1, 2))
        return products / queries.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if metric == "euclidean":
        products = torch.bmm(queries, prototypes.transpose(1, 2))
        squared = queries.norm(dim=-1, keepdim=True).square() + prototypes.square().sum(dim=-1).unsqueeze(1)
        return -(squared - 2 * products).clamp_min(0)
    raise ValueError(f"prototype_logits: unknown metric {metric!r} (allowed: cosine, euclidean)")


def logistic_logits(support: Tensor, query: Tensor, inverse_reg: float = 1.0, steps: int = 100, lr: float = 1.0,
                    momentum: float = 0.9, normalize: bool = True) -> Tensor:
    """Logits (E, W·Q, W) of a logistic regression fitted on each episode's support set; support (E, W, S, D).

    Objective per episode: mean CE over the n = W·S support images + ‖W‖² / (2 · inverse_reg · n), bias free
    (scikit-learn's ``LogisticRegression(C=inverse_reg)`` scaled by 1/n). It is minimised by ``steps`` of
    gradient descent with Nesterov momentum (``torch.optim.SGD``'s form) from zero. Starting from zero, every
    iterate of the weights lies in the span of the support features, W = Xᵀα, so the iteration runs on α (n, W)
    with the Gram matrix X Xᵀ: the same iterates as the primal descent, at a cost independent of D.
    """
    episodes, ways, shots, dim = support.shape
    n = ways * shots
    x = support.reshape(episodes, n, dim).float()
    q = query.reshape(episodes, -1, dim).float()
    if normalize:
        x, q = F.normalize(x, dim=-1), F.normalize(q, dim=-1)
    gram = torch.bmm(x, x.transpose(1, 2))  # (E, n, n)
    targets = F.one_hot(torch.arange(ways, device=x.device).repeat_interleave(shots), ways).to(x.dtype)  # (n, W)
    reg = 1.0 / (inverse_reg * n)
    alpha = x.new_zeros(episodes, n, ways)
    bias = x.new_zeros(episodes, 1, ways)
    alpha_buf, bias_buf = torch.zeros_like(alpha), torch.zeros_like(bias)
    for _ in range(steps):  # a loop over iterations, each over every episode at once; in place to spare allocations
        residual = torch.baddbmm(bias, gram, alpha).softmax(dim=-1).sub_(targets).div_(n)  # dCE/dlogits (E, n, W)
        grad_bias = residual.sum(dim=1, keepdim=True)
        grad_alpha = residual.add_(alpha, alpha=reg)  # the weight gradient Xᵀ(residual) + reg·W, in α coordinates
        alpha_buf.mul_(momentum).add_(grad_alpha)  # torch's SGD: the buffer starts at the first gradient
        bias_buf.mul_(momentum).add_(grad_bias)
        alpha.sub_(grad_alpha.add_(alpha_buf, alpha=momentum), alpha=lr)
        bias.sub_(grad_bias.add_(bias_buf, alpha=momentum), alpha=lr)
    return torch.bmm(torch.bmm(q, x.transpose(1, 2)), alpha) + bias


def episode_accuracies(support: Tensor, query: Tensor, head: Head = "cosine", **head_kwargs: Any) -> Tensor:
    """Per-episode query accuracy (E,) in [0, 1]; queries of class block w have episode label w."""
    if head == "logistic":
        logits = logistic_logits(support, query, **head_kwargs)
    else:
        logits = prototype_logits(support, query, head)
    ways, queries = query.shape[1], query.shape[2]
    labels = torch.arange(ways, device=logits.device).repeat_interleave(queries)
    return (logits.argmax(dim=-1) == labels).float().mean(dim=1)


def confidence_interval(accuracies: Tensor | Sequence[float], quantile: Literal["normal", "t"] = "normal",
                        level: float = 0.95) -> float:
    """Half-width of the ``level`` confidence interval of the mean: q · std / √n, std with n − 1 (the sample std).

    ``quantile="normal"``: q = 1.96 at 95% (the usual few-shot report, issue 14); ``"t"``: Student's
    t_{(1+level)/2, n−1}, 1.9612 for 2000 episodes (the official code's scipy form, specs/sun.md §2.7).
    """
    values = torch.as_tensor(accuracies, dtype=torch.float64).reshape(-1)
    n = values.numel()
    if n < 2:
        raise ValueError(f"confidence_interval: {n} value(s), expected at least 2")
    if quantile == "normal":
        q = 1.96 if level == 0.95 else float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((1 + level) / 2)))
    elif quantile == "t":
        from scipy.stats import t as student_t

        q = float(student_t.ppf((1 + level) / 2, n - 1))
    else:
        raise ValueError(f"confidence_interval: unknown quantile {quantile!r} (allowed: normal, t)")
    return q * float(values.std(unbiased=True)) / math.sqrt(n)


@dataclass(frozen=True)
class EpisodeResult:
    """One head on one episode shape: mean accuracy and 95% half-width in %, and the per-episode accuracies."""

    head: str
    ways: int
    shots: int
    queries: int
    episodes: int
    mean: float
    ci95: float
    accuracies: Tensor

    def summary(self) -> dict[str, float | int | str]:
        return {"head": self.head, "ways": self.ways, "shots": self.shots, "queries": self.queries,
                "episodes": self.episodes, "mean": self.mean, "ci95": self.ci95}


@torch.no_grad()
def evaluate_episodes(features: Tensor, labels: Tensor, shape: EpisodeShape, episodes: int = 2000,
                      seed: int = 12345, heads: Sequence[Head] = ("cosine",),
                      quantile: Literal["normal", "t"] = "normal", class_names: Sequence[str] | None = None,
                      logistic_kwargs: dict[str, Any] | None = None) -> dict[str, EpisodeResult]:
    """Score ``episodes`` episodes of ``shape`` drawn from (features (N, D), labels (N,)) with every head in
    ``heads``; all heads see the same episodes. Defaults: the spec's test protocol (2000 episodes, seed 12345)."""
    for head in heads:
        if head not in HEADS:
            raise ValueError(f"evaluate_episodes: unknown head {head!r} (allowed: {', '.join(HEADS)})")
    members = class_members(labels)
    check_episode_source(members, shape, class_names, source="evaluate_episodes")
    per_head: dict[str, list[Tensor]] = {head: [] for head in heads}
    for start in range(0, episodes, _BLOCK):
        ids = range(start, min(start + _BLOCK, episodes))
        index = sample_episodes(members, shape, list(ids), seed)
        support, query = split_episode_features(features, index.to(features.device), shape.shots)
        for head in heads:
            kwargs = (logistic_kwargs or {}) if head == "logistic" else {}
            per_head[head].append(episode_accuracies(support, query, head, **kwargs).cpu())
    results: dict[str, EpisodeResult] = {}
    for name, chunks in per_head.items():
        acc = torch.cat(chunks).double()
        results[name] = EpisodeResult(name, shape.ways, shape.shots, shape.queries, episodes,
                                      100.0 * float(acc.mean()), 100.0 * confidence_interval(acc, quantile), acc)
    return results
