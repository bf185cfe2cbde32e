"""Episodic evaluation against naive per-episode loops (specs/sun.md §5 "Meta-Baseline", "95% CI")."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.data.episodes import EpisodeShape, class_members, sample_episodes
from vitlab.evaluation.episodes import (
    confidence_interval,
    embed_dataset,
    episode_accuracies,
    evaluate_episodes,
    logistic_logits,
    prototype_logits,
    split_episode_features,
)

SHAPE = EpisodeShape(ways=5, shots=3, queries=4)


def _clustered(classes: int = 12, per_class: int = 20, dim: int = 16, noise: float = 1.5, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + noise * torch.randn(len(labels), dim, generator=gen), labels


def _naive_accuracy(features: torch.Tensor, labels: torch.Tensor, episodes: torch.Tensor, shots: int,
                    metric: str) -> list[float]:
    """One episode at a time, prototypes by a per-class loop."""
    out = []
    for episode in episodes:
        prototypes = torch.stack([features[block[:shots]].sum(0) / shots for block in episode])
        queries = torch.cat([features[block[shots:]] for block in episode])
        truth = torch.arange(len(episode)).repeat_interleave(episode.shape[1] - shots)
        if metric == "cosine":
            scores = F.normalize(queries, dim=1) @ F.normalize(prototypes, dim=1).T
        else:
            scores = -((queries[:, None] - prototypes[None]) ** 2).sum(-1)
        out.append(float((scores.argmax(1) == truth).float().mean()))
    return out


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_prototype_heads_equal_a_per_episode_loop(metric: str) -> None:
    features, labels = _clustered()
    episodes = sample_episodes(class_members(labels), SHAPE, range(60), seed=1)
    support, query = split_episode_features(features, episodes, SHAPE.shots)
    fast = episode_accuracies(support, query, metric)  # type: ignore[arg-type]
    slow = _naive_accuracy(features, labels, episodes, SHAPE.shots, metric)
    assert fast.tolist() == pytest.approx(slow)
    assert 0.5 < float(fast.mean()) < 1.0  # informative features, not perfect ones


def test_cosine_prototype_is_normalised_mean_and_temperature_free() -> None:
    support, query = torch.randn(3, 5, 2, 8), torch.randn(3, 5, 4, 8)
    logits = prototype_logits(support, query)
    for e in range(3):
        for w in range(5):
            proto = F.normalize(support[e, w].mean(0), dim=0)
            assert torch.allclose(logits[e, :, w], F.normalize(query[e].reshape(-1, 8), dim=1) @ proto, atol=1e-6)
    assert torch.equal((10.0 * logits).argmax(-1), logits.argmax(-1))


def test_random_features_are_at_chance() -> None:
    torch.manual_seed(0)
    features, labels = torch.randn(2000, 32), torch.arange(20).repeat(100)
    result = evaluate_episodes(features, labels, EpisodeShape(5, 1, 15), episodes=2000, seed=12345)["cosine"]
    assert abs(result.mean - 20.0) < 3 * result.ci95 / 1.96 + 0.1
    assert result.episodes == 2000 and result.accuracies.shape == (2000,)


def test_logistic_head_equals_primal_sgd_per_episode() -> None:
    """The span-of-support iteration against torch's SGD (Nesterov) on W, b, one episode at a time."""
    features, labels = _clustered(dim=24)
    episodes = sample_episodes(class_members(labels), SHAPE, range(6), seed=2)
    support, query = split_episode_features(features, episodes, SHAPE.shots)
    fast = logistic_logits(support, query, inverse_reg=0.5, steps=40, lr=0.8)
    n = SHAPE.ways * SHAPE.shots
    for e in range(6):
        x = F.normalize(support[e].reshape(n, -1), dim=1)
        y = torch.arange(SHAPE.ways).repeat_interleave(SHAPE.shots)
        weight = torch.zeros(24, SHAPE.ways, requires_grad=True)
        bias = torch.zeros(SHAPE.ways, requires_grad=True)
        opt = torch.optim.SGD([weight, bias], lr=0.8, momentum=0.9, nesterov=True)
        for _ in range(40):
            opt.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, y) + weight.square().sum() / (2 * 0.5 * n)
            loss.backward()
            opt.step()
        slow = F.normalize(query[e].reshape(-1, 24), dim=1) @ weight.detach() + bias.detach()
        assert torch.allclose(fast[e], slow, atol=1e-4)


def test_logistic_head_reaches_scikit_learns_optimum() -> None:
    from sklearn.linear_model import LogisticRegression

    features, labels = _clustered(dim=24, noise=2.5)
    episodes = sample_episodes(class_members(labels), SHAPE, range(3), seed=3)
    support, query = split_episode_features(features, episodes, SHAPE.shots)
    fast = logistic_logits(support, query, inverse_reg=1.0, steps=300).softmax(-1)
    for e in range(3):
        x = F.normalize(support[e].reshape(15, -1), dim=1).double().numpy()
        y = torch.arange(5).repeat_interleave(3).numpy()
        model = LogisticRegression(C=1.0, tol=1e-8, max_iter=10_000).fit(x, y)
        reference = model.predict_proba(F.normalize(query[e].reshape(20, -1), dim=1).double().numpy())
        assert torch.allclose(fast[e].double(), torch.from_numpy(reference), atol=2e-3)


def test_confidence_interval_formula() -> None:
    values = torch.rand(2000, generator=torch.Generator().manual_seed(0))
    std = float(values.double().std())
    assert confidence_interval(values) == pytest.approx(1.96 * std / math.sqrt(2000))
    t_quantile = confidence_interval(values, "t") * math.sqrt(2000) / std
    assert round(t_quantile, 4) == 1.9612
    naive_mean = sum(values.tolist()) / 2000
    naive_std = math.sqrt(sum((v - naive_mean) ** 2 for v in values.tolist()) / 1999)
    assert confidence_interval(values) == pytest.approx(1.96 * naive_std / math.sqrt(2000))
    # spec §5: half-widths 0.45 and 0.28 points mean per-episode stds of about 10.3 and 6.4 points
    assert 0.45 * math.sqrt(2000) / 1.9612 == pytest.approx(10.26, abs=0.01)
    assert 0.28 * math.sqrt(2000) / 1.9612 == pytest.approx(6.38, abs=0.01)


def test_evaluate_episodes_matches_the_loop_and_shares_episodes_between_heads() -> None:
    features, labels = _clustered()
    results = evaluate_episodes(features, labels, SHAPE, episodes=300, seed=9, heads=("cosine", "euclidean"))
    episodes = sample_episodes(class_members(labels), SHAPE, range(300), seed=9)
    slow = _naive_accuracy(features, labels, episodes, SHAPE.shots, "cosine")
    assert results["cosine"].accuracies.tolist() == pytest.approx(slow)
    assert results["cosine"].mean == pytest.approx(100 * sum(slow) / 300)
    assert results["cosine"].ci95 == pytest.approx(100 * confidence_interval(torch.tensor(slow)))
    with pytest.raises(ValueError, match="unknown head 'svm'"):
        evaluate_episodes(features, labels, SHAPE, heads=("svm",))  # type: ignore[arg-type]


def test_embed_dataset_runs_each_image_once_in_order() -> None:
    images = torch.arange(10.0).view(10, 1, 1, 1)
    dataset = [{"image": images[i], "label": i % 3} for i in range(10)]
    calls = []

    def feature_fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.flatten(1).repeat(1, 2)

    features, labels = embed_dataset(feature_fn, dataset, batch_size=4)  # type: ignore[arg-type]
    assert sum(calls) == 10 and features[:, 0].tolist() == list(range(10))
    assert labels.tolist() == [i % 3 for i in range(10)]
