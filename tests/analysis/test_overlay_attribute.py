"""The ``attribute`` map source (spec ar.md §2.2): TransZero++'s AVT attention of the top-k attributes by ψ score."""

from __future__ import annotations

import pytest
import torch

from vitlab.analysis.overlay import attribute_maps, postprocess, token_map
from vitlab.models.transzero import TransZeroPP

CLASSES, ATTRIBUTES, GRID, IN_DIM = 5, 12, (3, 4), 8  # a non-square region grid


@pytest.fixture(scope="module")
def model() -> TransZeroPP:
    torch.manual_seed(0)
    return TransZeroPP(torch.rand(CLASSES, ATTRIBUTES), torch.randn(ATTRIBUTES, 10), [1, 3], GRID, IN_DIM, 12, 20,
                       0.0, True).train()


def test_top_k_maps_are_the_highest_scoring_attributes(model: TransZeroPP) -> None:
    features = torch.rand(2, IN_DIM, *GRID)
    maps, order = attribute_maps(model, features)  # default k = 10, as TransZero's attention_map.py
    assert maps.shape == (2, 10, *GRID) and order.shape == (2, 10)
    assert model.training  # train flags restored
    with torch.no_grad():
        model.eval()
        scores = model(features)["embedding_avt"]
        every = model.attribute_attention_maps(features)
        model.train()
    assert torch.equal(order, scores.argsort(dim=1, descending=True)[:, :10])
    for b in range(2):
        for k in range(10):
            assert torch.equal(maps[b, k], every[b, order[b, k]])
    assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(2, 10), atol=1e-5)  # attention over the regions


def test_token_map_attribute_by_rank_and_index(model: TransZeroPP) -> None:
    features = torch.rand(3, IN_DIM, *GRID)
    maps, order = attribute_maps(model, features, top_k=3)
    assert torch.equal(token_map(model, features, "attribute"), maps[:, 0])
    assert torch.equal(token_map(model, features, "attribute", rank=2), maps[:, 2])
    seventh, index = attribute_maps(model, features, attribute=7)
    assert (index == 7).all() and torch.equal(token_map(model, features, "attribute", attribute=7), seventh[:, 0])
    m = postprocess(token_map(model, features, "attribute"), (30, 40))
    assert m.shape == (3, 1, 30, 40) and float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    assert torch.equal(token_map(model, features, "attribute"), token_map(model, features, "attribute"))


def test_attribute_errors_are_one_line(model: TransZeroPP) -> None:
    features = torch.rand(1, IN_DIM, *GRID)
    with pytest.raises(ValueError, match="attribute: 12 is not an attribute index"):
        attribute_maps(model, features, attribute=12)
    with pytest.raises(ValueError, match="top_k"):
        attribute_maps(model, features, top_k=0)
    vat_only = TransZeroPP(torch.rand(CLASSES, ATTRIBUTES), torch.randn(ATTRIBUTES, 10), [1], GRID, IN_DIM, 12, 20,
                           branches=("vat",))
    with pytest.raises(ValueError, match="AVT"):
        token_map(vat_only, features, "attribute")
