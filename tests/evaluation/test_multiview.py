"""Multi-view evaluation: probability vs logit averaging, view folding, views and total FLOPs."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

import vitlab  # noqa: F401  (registers the models)
from vitlab.data.video import MovingDigits
from vitlab.evaluation.multiview import average_view_scores, evaluate_multiview, fold_views
from vitlab.models.profile import count_flops

# One video, three views: one confident vote for class 1, two mild votes for class 0.
DISAGREEING_VIEWS = torch.tensor([[[0.0, 3.0], [1.0, 0.0], [1.0, 0.0]]])


def naive_prob_average(logits: list[list[float]]) -> list[float]:
    probs = []
    for view in logits:
        exps = [math.exp(v) for v in view]
        probs.append([e / sum(exps) for e in exps])
    return [sum(p[k] for p in probs) / len(probs) for k in range(len(logits[0]))]


def test_probability_and_logit_averaging_against_loops_and_they_disagree():
    prob = average_view_scores(DISAGREEING_VIEWS, "prob")[0]
    logit = average_view_scores(DISAGREEING_VIEWS, "logit")[0]
    torch.testing.assert_close(prob, torch.tensor(naive_prob_average(DISAGREEING_VIEWS[0].tolist())))
    torch.testing.assert_close(logit, torch.tensor([2 / 3, 1.0]))
    assert prob.argmax() == 0 and logit.argmax() == 1  # softmax averaging discounts the one confident view
    torch.testing.assert_close(prob.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="average"):
        average_view_scores(DISAGREEING_VIEWS, "max")


def test_fold_views():
    video = torch.rand(2, 3, 3, 4, 8, 8)
    flat, views = fold_views(video)
    assert views == 3 and flat.shape == (6, 3, 4, 8, 8) and torch.equal(flat[4], video[1, 1])
    single, one = fold_views(torch.rand(2, 3, 4, 8, 8))
    assert one == 1 and single.shape == (2, 3, 4, 8, 8)
    with pytest.raises(ValueError, match="video"):
        fold_views(torch.rand(2, 3, 8, 8))


class LookupModel(nn.Module):
    """Returns fixed logits per view: the view's value at [0, 0, 0, 0] indexes a table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0, 0].long()]


def lookup_loader():
    # Video 0 (label 0): the disagreeing views above. Video 1 (label 1): three views all voting class 1.
    table = torch.tensor([[0.0, 3.0], [1.0, 0.0], [0.0, 2.0]])
    codes = torch.tensor([[0, 1, 1], [2, 2, 2]])
    video = codes[:, :, None, None, None, None].float().expand(-1, -1, 3, 2, 4, 4)
    return LookupModel(table), [{"video": video, "label": torch.tensor([0, 1])}]


def test_evaluate_multiview_prob_vs_logit_and_reported_cost():
    model, loader = lookup_loader()
    prob = evaluate_multiview(model, loader, average="prob", flops_per_view=1_000, temporal_clips=3)
    logit = evaluate_multiview(model, loader, average="logit", flops_per_view=1_000, temporal_clips=3)
    assert prob["top1"] == 100.0 and logit["top1"] == 50.0
    assert prob["views"] == 3 and prob["temporal_clips"] == 3 and prob["spatial_crops"] == 1
    assert prob["total_flops"] == 3_000 and prob["num_videos"] == 2
    expected_nll = (
        -(math.log(naive_prob_average([[0, 3], [1, 0], [1, 0]])[0]) + math.log(naive_prob_average([[0, 2]] * 3)[1])) / 2
    )
    assert math.isclose(prob["loss"], expected_nll, rel_tol=1e-5)
    chunked = evaluate_multiview(model, loader, flops_per_view=1, max_views_per_forward=2)
    assert chunked["top1"] == prob["top1"] and math.isclose(chunked["loss"], prob["loss"], rel_tol=1e-6)
    with pytest.raises(ValueError, match="temporal_clips"):
        evaluate_multiview(model, loader, flops_per_view=1, temporal_clips=2, spatial_crops=1)


@pytest.fixture(scope="module")
def per_view_flops() -> int:
    return count_flops(timm.create_model("test_dualformer"), (3, 8, 32, 32))


def test_moving_digits_two_clip_evaluation_with_dualformer(per_view_flops):
    data = MovingDigits("test", num_clips=2)
    subset = torch.utils.data.Subset(data, range(8))
    loader = torch.utils.data.DataLoader(subset, batch_size=4)
    torch.manual_seed(0)
    model = timm.create_model("test_dualformer")
    result = evaluate_multiview(model, loader)
    per_view = per_view_flops
    assert result["views"] == 2 and result["temporal_clips"] == 2 and result["num_videos"] == 8
    assert result["flops_per_view"] == per_view and result["total_flops"] == 2 * per_view
    # top-1 counts videos, not clips: a multiple of 100/8 (clips would give multiples of 100/16)
    assert result["top1"] * 8 / 100 == pytest.approx(round(result["top1"] * 8 / 100), abs=1e-9)
    # an untrained model is near uniform over the 4 motions: NLL ≈ ln 4 (1.42 here; 1.35-1.42 over seeds 0-3)
    assert abs(result["loss"] - math.log(4)) < 0.15
    assert model.training  # the evaluator restores the mode
