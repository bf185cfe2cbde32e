"""TransZero++ network (specs/transzero.md §2.3, §5): parameter counts, geometry embedding, naive-loop equivalences."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.models.transzero import (
    DecoderLayer,
    FeatureAugmentationEncoder,
    GlobalCompatibility,
    RegionGridError,
    TransZeroPP,
    geometry_embedding,
)

# (d, FFN, A, C, decoder self-attention, aux embed) -> (all params, trainable) of the official model (§2.3.5)
OFFICIAL = {
    "CUB": ((300, 512, 312, 200, True, True), 7_216_579, 7_113_978, 5_180_178),
    "AWA2": ((300, 512, 85, 50, True, True), 7_052_679, 7_045_878, 5_112_078),
    "SUN": ((128, 2048, 102, 717, False, False), 4_097_199, 3_509_258, 3_208_714),
}


def _model(name: str, legacy: bool) -> TransZeroPP:
    (d, ffn, a, c, sa, aux), *_ = OFFICIAL[name]
    return TransZeroPP(torch.rand(c, a), torch.randn(a, 300), list(range(c // 4)), (14, 14), 2048, d, ffn, 0.0, sa,
                       legacy_params=legacy, aux_embed=aux)


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_parameter_counts(name: str) -> None:
    (d, _, _, _, sa, _), all_params, trainable, used = OFFICIAL[name]
    legacy = _model(name, legacy=True)
    assert sum(p.numel() for p in legacy.parameters()) == all_params
    assert sum(p.numel() for p in legacy.parameters() if p.requires_grad) == trainable
    # vitlab's default drops every dead tensor: the spec's "used" column still counts the full d×d W₄ (only its
    # diagonal is read, §2.1 item 3) and, for SUN (tf_SAtt off), the decoder self-attention and its norm per sub-net
    model = _model(name, legacy=False)
    dead_sa = 0 if sa else 2 * ((4 * d * d + 4 * d) + 2 * d)
    assert sum(p.numel() for p in model.parameters()) == used - (d * d - d) - dead_sa


def test_geometry_embedding_values() -> None:
    emb = geometry_embedding((14, 14))
    assert emb.shape == (196, 196, 64)
    first = [0.3662, -0.7646, 0.3118, -0.9994, -0.1464, -0.2115, 0.6764, -0.9977]
    assert torch.allclose(emb[0, 0, :8], torch.tensor(first), atol=1e-3)
    dy = [-0.5875, -0.8913, 0.8587, -0.9936, -0.7586, 0.4526, -0.9989, -0.5989]
    assert torch.allclose(emb[0, 1, 8:16], torch.tensor(dy), atol=1e-3)
    assert torch.all(emb[..., 16:32] == 0) and torch.all(emb[..., 48:64] == 1)


def _official_geometry(batch: int, grid: int) -> torch.Tensor:
    """The official BoxRelationalEmbedding, per batch (B, R, R, 64), written out from the spec."""
    r = grid * grid
    pos = torch.arange(grid).float()
    x_min = pos.view(-1, 1).expand(-1, grid).reshape(-1) / grid
    y_min = pos.view(1, -1).expand(grid, -1).reshape(-1) / grid
    x_max, y_max = x_min + 1 / grid, y_min + 1 / grid
    cx, cy = (x_min + x_max) / 2, (y_min + y_max) / 2
    w, h = (x_max - x_min) + 1, (y_max - y_min) + 1
    out = torch.zeros(batch, r, r, 64)
    for m in range(r):
        for n in range(r):
            vals = [math.log(max(abs(cx[m] - cx[n]) / w[m], 1e-3)), math.log(max(abs(cy[m] - cy[n]) / h[m], 1e-3)),
                    math.log(w[m] / w[n]), math.log(h[m] / h[n])]
            angles = [100 * v / 1000 ** (k / 8) for v in vals for k in range(8)]
            out[:, m, n] = torch.tensor([math.sin(a) for a in angles] + [math.cos(a) for a in angles])
    return out


def test_encoder_matches_naive_per_batch_geometry() -> None:
    torch.manual_seed(0)
    grid, dim = 4, 16
    encoder = FeatureAugmentationEncoder(dim, 24, 0.0, (grid, grid)).eval()
    assert torch.allclose(encoder.geometry, _official_geometry(1, grid)[0], atol=1e-4)
    h = torch.randn(3, grid * grid, dim)
    # naive: G recomputed per batch item, attention written out
    g = F.relu(encoder.geometry_weight(_official_geometry(3, grid))).squeeze(-1)  # (B, R, R)
    assert torch.equal(encoder.geometry_bias().expand(3, -1, -1), F.relu(encoder.geometry_weight(
        encoder.geometry.expand(3, -1, -1, -1))).squeeze(-1))
    att = encoder.attn
    q, k, v = att.fc_q(h), att.fc_k(h), att.fc_v(h)
    out = torch.zeros_like(h)
    for b in range(3):
        logits = q[b] @ k[b].t() / math.sqrt(dim) - g[b]
        out[b] = torch.softmax(logits, -1) @ v[b]
    a = encoder.attn_norm(h + att.fc_o(out))
    a = encoder.norm(h + a)
    expected = encoder.ffn_norm(a + encoder.fc2(F.relu(encoder.fc1(a))))
    assert torch.allclose(encoder(h), expected, atol=1e-5)


def test_decoder_layer_is_torch_post_ln_decoder() -> None:
    torch.manual_seed(0)
    ours = DecoderLayer(16, 32, 0.0, self_attention=True).eval()
    ref = nn.TransformerDecoderLayer(16, 1, 32, 0.0, batch_first=True).eval()
    ref.self_attn.load_state_dict(ours.self_attn.state_dict())
    ref.multihead_attn.load_state_dict(ours.cross_attn.state_dict())
    for name in ("linear1", "linear2", "norm1", "norm2", "norm3"):
        getattr(ref, name).load_state_dict(getattr(ours, name).state_dict())
    q, m = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    assert torch.allclose(ours(q, m)[0], ref(q, m), atol=1e-5)


def _tiny(branches=("avt", "vat"), vat_init="normal", grid=(3, 3), a=6, c=5) -> TransZeroPP:
    torch.manual_seed(0)
    return TransZeroPP(torch.rand(c, a), torch.randn(a, 10), [1, 3], grid, 8, 12, 20, 0.0, True, vat_init=vat_init,
                       alpha=0.7, branches=branches).eval()


def test_avt_and_vat_match_naive_loops() -> None:
    model = _tiny()
    x = torch.randn(2, 8, 3, 3)
    regions, words = model.regions(x), model.word_vectors()
    # AVT: ψ₁[b, i] = V_iᵀ W₁ F[b, i]
    _, memory, h_a = model.avt.embed(regions, words)
    feats, _ = model.avt.decoder(h_a.expand(2, -1, -1), memory)
    psi1 = torch.zeros(2, 6)
    for b in range(2):
        for i in range(6):
            psi1[b, i] = words[i] @ model.W1_avt @ feats[b, i]
    # VAT with the official einsum over a full W₄ ('cc' reads its diagonal) against a loop over the diagonal
    h_v, memory, h_a = model.vat.embed(regions, words)
    feats, _ = model.vat.decoder(memory, h_a.expand(2, -1, -1))
    w4_full = torch.randn(12, 12)
    w4_full.diagonal().copy_(model.w4_vat.detach())
    energy = torch.einsum("brc,cc,bic->bir", h_v, w4_full, h_a.expand(2, -1, -1))
    psi2 = torch.zeros(2, 6)
    for b in range(2):
        for i in range(6):
            for r in range(9):
                s = memory[b, r] @ model.W1_vat @ feats[b, r]
                e = sum(h_v[b, r, ch] * model.w4_vat[ch] * h_a[i, ch] for ch in range(12))
                assert torch.allclose(e, energy[b, i, r], atol=1e-4)
                psi2[b, i] += e * s
    out = model(x)
    assert torch.allclose(out["embedding_avt"], psi1, atol=1e-4)
    assert torch.allclose(out["embedding_vat"], psi2, rtol=1e-4, atol=1e-3)
    beta = torch.tensor([-1.0, 1, -1, 1, -1])
    assert torch.allclose(out["scores_avt"], psi1 @ model.class_vectors.t() + beta, atol=1e-4)
    assert torch.allclose(out["scores"], 0.7 * out["scores_avt"] + 0.3 * out["scores_vat"], atol=1e-5)


def test_vat_at_init_is_the_calibration() -> None:
    model = _tiny(vat_init="zeros")
    out = model(torch.randn(4, 8, 3, 3))
    assert torch.equal(out["embedding_vat"], torch.zeros(4, 6))
    assert torch.equal(out["scores_vat"], model.calibration.expand(4, -1))


def test_shapes_gradients_and_attention_maps() -> None:
    model = _tiny().train()
    out = model(torch.randn(4, 8, 3, 3))
    assert out["scores"].shape == (4, 5) and out["embedding_avt"].shape == (4, 6)
    out["scores"].logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    maps = model.attribute_attention_maps(torch.randn(2, 8, 3, 3))
    assert maps.shape == (2, 6, 3, 3)
    assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(2, 6), atol=1e-5)


def test_branch_subsets_and_baseline() -> None:
    x = torch.randn(2, 8, 3, 3)
    assert set(_tiny(branches=("avt",))(x)) == {"scores", "scores_avt", "embedding_avt"}
    assert set(_tiny(branches=("vat",))(x)) == {"scores", "scores_vat", "embedding_vat"}
    base = GlobalCompatibility(torch.rand(5, 6), [1, 3], (3, 3), 8)
    assert base(x)["scores"].shape == (2, 5)
    with pytest.raises(ValueError, match="branches"):
        _tiny(branches=("foo",))


def test_bad_grid_and_word_vectors() -> None:
    model = _tiny()
    with pytest.raises(RegionGridError, match=r"\(B, 8, 3, 3\)"):
        model(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match="word_vectors"):
        TransZeroPP(torch.rand(5, 6), torch.randn(7, 10), [1], (3, 3), 8, 12, 20)
