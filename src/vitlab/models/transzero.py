"""TransZero++ (Chen et al., TPAMI 2022; specs/transzero.md §2.3): attribute↔visual transformers over frozen regions.

Two sub-nets share the trainable attribute word vectors V (A, 300):

- **AVT** (attribute→visual, the official "s2v"): the attributes query the encoded regions; ψ₁[b, i] = V_iᵀ W₁ F[b, i].
- **VAT** (visual→attribute, "v2s"): the regions query the attributes; per-region scores s[b, r] = M[b, r]ᵀ W₁′ F′[b, r]
  weight the affinities E[b, i, r] = Σ_c h_v[b, r, c] w₄[c] h_a[i, c] (the diagonal bilinear form, §2.1 item 3).

Each sub-net's attribute scores ψ (B, A) become class scores S = ψ zᵀ + β with z the L2-normalised class vectors and
β = +1 for unseen, −1 for seen classes (calibrated stacking with γ = 2, fixed); the fused score is
α S_AVT + (1 − α) S_VAT.

The feature augmentation encoder (FAE) subtracts a learned relative-geometry bias G from the attention logits; G
depends only on the region grid, so it is computed once per forward with batch dimension 1 and broadcast (the
official code recomputes it per image, with identical outputs).

:class:`GlobalCompatibility` is the small-scale plan's baseline (§6): pooled feature → linear → attribute space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Branch = Literal["avt", "vat"]

#: dimension of the word vectors the official files hold (word2vec GoogleNews)
WORD_DIM = 300
#: the geometry embedding's width (RSTNet's ``dim_g``) and wave length
GEOMETRY_DIM = 64
GEOMETRY_WAVE = 1000.0


class RegionGridError(ValueError):
    """Region features whose grid or channel count disagrees with the model's."""


def grid_geometry(grid: tuple[int, int]) -> Tensor:
    """The 4 relative-geometry numbers of every region pair of a ``grid`` (rows, cols): (R, R, 4), R = rows · cols.

    Region k = i · cols + j has x index i (normalised by ``rows``) and y index j (by ``cols``), as the official
    ``get_grids_pos``. Entries: log(max(|Δcx| / w, 1e-3)), log(max(|Δcy| / h, 1e-3)), log(w_m / w_n), log(h_m / h_n)
    with w = (x_max − x_min) + 1 (RSTNet's "+1"), so the last two are 0 on a regular grid.
    """
    rows, cols = grid
    i = torch.arange(rows, dtype=torch.float32).repeat_interleave(cols)
    j = torch.arange(cols, dtype=torch.float32).repeat(rows)
    x_min, x_max = i / rows, (i + 1) / rows
    y_min, y_max = j / cols, (j + 1) / cols
    cx, cy = (x_min + x_max) / 2, (y_min + y_max) / 2
    w, h = (x_max - x_min) + 1.0, (y_max - y_min) + 1.0
    dx = torch.log(torch.clamp(torch.abs((cx[:, None] - cx[None, :]) / w[:, None]), min=1e-3))
    dy = torch.log(torch.clamp(torch.abs((cy[:, None] - cy[None, :]) / h[:, None]), min=1e-3))
    dw = torch.log(w[:, None] / w[None, :])
    dh = torch.log(h[:, None] / h[None, :])
    return torch.stack([dx, dy, dw, dh], dim=-1)


def geometry_embedding(grid: tuple[int, int], dim: int = GEOMETRY_DIM, wave_len: float = GEOMETRY_WAVE) -> Tensor:
    """Sinusoidal embedding of :func:`grid_geometry`: (R, R, dim) = [sin of 4 · dim/8 | cos of the same], each
    quantity (dx, dy, dw, dh) times 100 times the frequencies wave_len^(−k / (dim/8)), quantity-major (§2.3.2)."""
    geometry = grid_geometry(grid)  # (R, R, 4)
    freqs = 1.0 / wave_len ** (torch.arange(dim // 8, dtype=torch.float32) / (dim // 8))
    angles = (100.0 * geometry[..., None] * freqs).flatten(-2)  # (R, R, 4 · dim/8)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class GeometryAttention(nn.Module):
    """One-head scaled dot-product attention with the geometry bias subtracted: softmax(QKᵀ/√d − G) V, then ``fc_o``.

    The attention-weight dropout is fixed at 0.1: the official code never passes its dropout down (pitfall 5).
    """

    def __init__(self, dim: int, attn_drop: float = 0.1) -> None:
        super().__init__()
        self.fc_q, self.fc_k, self.fc_v, self.fc_o = (nn.Linear(dim, dim) for _ in range(4))
        for layer in (self.fc_q, self.fc_k, self.fc_v, self.fc_o):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: Tensor, geometry_bias: Tensor) -> Tensor:
        """x (B, R, d), geometry_bias (1 or B, R, R) -> (B, R, d)."""
        logits = self.fc_q(x) @ self.fc_k(x).transpose(1, 2) * self.scale - geometry_bias
        return self.fc_o(self.attn_drop(logits.softmax(dim=-1)) @ self.fc_v(x))


class FeatureAugmentationEncoder(nn.Module):
    """The FAE (§2.3.2): one post-LN layer of :class:`GeometryAttention` and an FFN, with the residual applied twice
    as the official code does: a = LN₁(h + Drop(attn)), a′ = LN₂(h + Drop(a)), out = LN₃(a′ + Drop(FFN(a′)))."""

    geometry: Tensor

    def __init__(self, dim: int, ffn_dim: int, dropout: float, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.register_buffer("geometry", geometry_embedding(grid), persistent=False)  # (R, R, 64)
        self.geometry_weight = nn.Linear(GEOMETRY_DIM, 1)  # WG of the single head
        self.attn = GeometryAttention(dim)
        self.attn_norm = nn.LayerNorm(dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.drop_attn_out = nn.Dropout(dropout)
        self.drop_ffn_hidden = nn.Dropout(dropout)
        self.drop_ffn_out = nn.Dropout(dropout)

    def geometry_bias(self) -> Tensor:
        """G = ReLU(Linear(64 → 1)(embedding)) of the grid: (1, R, R), computed once and broadcast over the batch."""
        return F.relu(self.geometry_weight(self.geometry)).squeeze(-1).unsqueeze(0)

    def forward(self, h: Tensor) -> Tensor:
        """h (B, R, d) -> (B, R, d)."""
        a = self.attn_norm(h + self.drop_attn_out(self.attn(h, self.geometry_bias())))
        a = self.norm(h + self.drop(a))
        ffn = self.fc2(self.drop_ffn_hidden(F.relu(self.fc1(a))))
        return self.ffn_norm(a + self.drop_ffn_out(ffn))


class DecoderLayer(nn.Module):
    """torch's post-LN ``TransformerDecoderLayer`` (ReLU FFN, every dropout = ``dropout``), batch-first, with the
    query self-attention optional (``tf_SAtt``: on for CUB / AWA2, off for SUN).

    ``keep_unused=True`` builds the self-attention and its norm even when it is off, as the official module does
    (legacy parameter layout).
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float, self_attention: bool, keep_unused: bool = False
                 ) -> None:
        super().__init__()
        self.self_attention = self_attention
        if self_attention or keep_unused:
            self.self_attn = nn.MultiheadAttention(dim, 1, dropout=dropout, batch_first=True)
            self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, 1, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout, self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(4))

    def forward(self, queries: Tensor, memory: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """queries (B, Q, d), memory (B, K, d) -> (B, Q, d) and, if asked, the cross-attention weights (B, Q, K)."""
        x = queries
        if self.self_attention:
            x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, need_weights=False)[0]))
        attended, weights = self.cross_attn(x, memory, memory, need_weights=return_attention)
        x = self.norm2(x + self.dropout2(attended))
        x = self.norm3(x + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x, weights


class SubNet(nn.Module):
    """One sub-net's embeddings, encoder and decoder (AVT and VAT have the same structure, separate weights)."""

    def __init__(self, in_dim: int, dim: int, ffn_dim: int, dropout: float, self_attention: bool,
                 grid: tuple[int, int], word_dim: int = WORD_DIM, legacy: bool = False, aux_embed: bool = False
                 ) -> None:
        super().__init__()
        self.embed_cv = nn.Linear(in_dim, dim)
        if legacy and aux_embed:
            self.embed_cv_aux = nn.Linear(in_dim, dim)  # created by the official code, never used
        self.embed_attr = nn.Linear(word_dim, dim)
        self.encoder = FeatureAugmentationEncoder(dim, ffn_dim, dropout, grid)
        self.decoder = DecoderLayer(dim, ffn_dim, dropout, self_attention, keep_unused=legacy)

    def embed(self, regions: Tensor, words: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """regions (B, R, in_dim), words (A, D) -> h_v (B, R, d), encoder output M (B, R, d), h_a (A, d)."""
        h_v = self.embed_cv(regions)
        return h_v, self.encoder(h_v), self.embed_attr(words)


class TransZeroPP(nn.Module):
    """TransZero++ over frozen region features (specs/transzero.md §2.3).

    Args:
        class_attributes: (C, A) class semantic vectors (xlsa17 ``att`` transposed); rows are L2-normalised here.
        word_vectors: (A, D) attribute word vectors (D = 300 for the official word2vec files); row-normalised and made
            a trainable parameter shared by both sub-nets.
        unseen: the unseen class ids (0-based); β = +1 on them, −1 on the rest.
        grid: the region grid (rows, cols): (14, 14) for ResNet-101 at 448 px.
        in_dim: channels of a region feature (2048 for ResNet-101).
        dim: ``tf_common_dim`` d; ffn_dim: ``tf_dim_feedforward``; dropout: ``tf_dropout``.
        self_attention: ``tf_SAtt``; normalize_v: ``normalize_V`` (re-normalise V every forward, AWA2).
        vat_init: initialisation of W₁′, "zeros" (CUB, AWA2) or "normal" (SUN).
        alpha: ``weight_s2v``, the AVT weight of the fused score.
        branches: which sub-nets exist: ("avt", "vat") is TransZero++, ("avt",) is TransZero, ("vat",) VAT alone.
        legacy_params: also build the official code's dead tensors (``embed_cv_aux``, ``W_3_*``, the full d×d W₄ of
            which only the diagonal is read, the skipped self-attention, and ``att`` / the one-hot identity / the bias
            mask / the scalar bias as frozen parameters), so the parameter count equals the official model's.
        aux_embed: with ``legacy_params``, also the unused ``embed_cv_aux`` (``tf_aux_embed``: CUB and AWA2).
    """

    class_vectors: Tensor
    calibration: Tensor
    unseen: Tensor
    avt: SubNet
    vat: SubNet
    W1_avt: nn.Parameter
    W1_vat: nn.Parameter
    w4_vat: nn.Parameter

    def __init__(self, class_attributes: Tensor, word_vectors: Tensor, unseen: Sequence[int], grid: tuple[int, int],
                 in_dim: int = 2048, dim: int = 300, ffn_dim: int = 512, dropout: float = 0.4,
                 self_attention: bool = True, normalize_v: bool = False, vat_init: Literal["zeros", "normal"] = "zeros",
                 alpha: float = 0.9, branches: Sequence[Branch] = ("avt", "vat"), legacy_params: bool = False,
                 aux_embed: bool = False) -> None:
        super().__init__()
        num_classes, num_attributes = class_attributes.shape
        if word_vectors.dim() != 2 or word_vectors.shape[0] != num_attributes:
            raise ValueError(f"word_vectors: shape {tuple(word_vectors.shape)}, expected ({num_attributes}, D) for "
                             f"{num_attributes} attributes")
        word_dim = int(word_vectors.shape[1])
        unknown = [b for b in branches if b not in ("avt", "vat")]
        if unknown or not branches:
            raise ValueError(f"branches: {list(branches)}, expected a non-empty subset of ['avt', 'vat']")
        self.num_classes, self.num_attributes = num_classes, num_attributes
        self.grid, self.in_dim, self.dim = (int(grid[0]), int(grid[1])), in_dim, dim
        self.branches: tuple[str, ...] = tuple(branches)
        self.normalize_v, self.alpha, self.legacy_params = normalize_v, alpha, legacy_params
        unseen_ids = torch.as_tensor(list(unseen), dtype=torch.long)
        calibration = torch.full((num_classes,), -1.0)
        calibration[unseen_ids] = 1.0
        self.register_buffer("class_vectors", F.normalize(class_attributes.float(), dim=1))
        self.register_buffer("calibration", calibration)  # β: +1 unseen, −1 seen (not learned)
        self.register_buffer("unseen", unseen_ids)
        self.V = nn.Parameter(F.normalize(word_vectors.float(), dim=1))
        sub = {"in_dim": in_dim, "dim": dim, "ffn_dim": ffn_dim, "dropout": dropout,
               "self_attention": self_attention, "grid": self.grid, "word_dim": word_dim, "legacy": legacy_params,
               "aux_embed": aux_embed}
        if "avt" in branches:
            self.avt = SubNet(**sub)  # type: ignore[arg-type]
            self.W1_avt = nn.Parameter(torch.randn(word_dim, dim))  # W₁, normal(0, 1)
        if "vat" in branches:
            self.vat = SubNet(**sub)  # type: ignore[arg-type]
            self.W1_vat = nn.Parameter(torch.zeros(dim, dim) if vat_init == "zeros" else torch.randn(dim, dim))
            w4 = torch.randn(dim, dim)  # W₄ is drawn full, as the official init; only its diagonal is ever read
            self.w4_vat = nn.Parameter(w4 if legacy_params else w4.diagonal().clone())
        if legacy_params:
            self.W_3_s2v = nn.Parameter(torch.zeros(word_dim, dim))
            self.W_3_v2s = nn.Parameter(torch.zeros(in_dim, dim))
            self.att = nn.Parameter(self.class_vectors.clone(), requires_grad=False)
            self.weight_ce = nn.Parameter(torch.eye(num_classes), requires_grad=False)
            self.mask_bias = nn.Parameter(calibration[None].clone(), requires_grad=False)
            self.bias = nn.Parameter(torch.tensor(1), requires_grad=False)

    # ---- inputs ---------------------------------------------------------------------------------------------------
    def regions(self, features: Tensor) -> Tensor:
        """Region features (B, in_dim, rows, cols) -> L2-normalised over channels, as tokens (B, R, in_dim)."""
        if features.dim() != 4 or tuple(features.shape[1:]) != (self.in_dim, *self.grid):
            raise RegionGridError(f"region features: shape {tuple(features.shape)}, the model expects (B, "
                                  f"{self.in_dim}, {self.grid[0]}, {self.grid[1]})")
        return F.normalize(features.flatten(2), dim=1).transpose(1, 2)

    def word_vectors(self) -> Tensor:
        return F.normalize(self.V, dim=1) if self.normalize_v else self.V

    def diagonal_w4(self) -> Tensor:
        return self.w4_vat.diagonal() if self.w4_vat.dim() == 2 else self.w4_vat

    # ---- the two sub-nets -----------------------------------------------------------------------------------------
    def avt_embedding(self, regions: Tensor, words: Tensor) -> Tensor:
        """AVT: attribute queries over the encoded regions; ψ₁ (B, A) = V_iᵀ W₁ F[b, i] (§2.3.3)."""
        _, memory, h_a = self.avt.embed(regions, words)
        features, _ = self.avt.decoder(h_a.expand(regions.shape[0], -1, -1), memory)  # F (B, A, d)
        return torch.einsum("iv,vc,bic->bi", words, self.W1_avt, features)

    def vat_embedding(self, regions: Tensor, words: Tensor) -> Tensor:
        """VAT: region queries over the attributes; ψ₂[b, i] = Σ_r E[b, i, r] s[b, r] with
        s[b, r] = M[b, r]ᵀ W₁′ F′[b, r] and E[b, i, r] = Σ_c h_v[b, r, c] w₄[c] h_a[i, c] (h_v the pre-encoder
        embedding)."""
        h_v, memory, h_a = self.vat.embed(regions, words)
        features, _ = self.vat.decoder(memory, h_a.expand(regions.shape[0], -1, -1))  # F′ (B, R, d)
        region_scores = torch.einsum("brf,fc,brc->br", memory, self.W1_vat, features)
        pooled = torch.einsum("brc,br->bc", h_v, region_scores)  # Σ_r h_v[b, r, c] s[b, r]
        return (pooled * self.diagonal_w4()) @ h_a.t()

    def class_scores(self, embedding: Tensor) -> Tensor:
        """ψ (B, A) -> S (B, C) = ψ zᵀ + β (§2.3.4)."""
        return embedding @ self.class_vectors.t() + self.calibration

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Region features (B, in_dim, rows, cols) -> {"scores": fused S (B, C) with β, and per branch k in
        ``branches``: "scores_k" (B, C), "embedding_k" ψ_k (B, A)}."""
        regions, words = self.regions(features), self.word_vectors()
        out: dict[str, Tensor] = {}
        if "avt" in self.branches:
            out["embedding_avt"] = self.avt_embedding(regions, words)
            out["scores_avt"] = self.class_scores(out["embedding_avt"])
        if "vat" in self.branches:
            out["embedding_vat"] = self.vat_embedding(regions, words)
            out["scores_vat"] = self.class_scores(out["embedding_vat"])
        if len(self.branches) == 2:
            out["scores"] = self.alpha * out["scores_avt"] + (1 - self.alpha) * out["scores_vat"]
        else:
            out["scores"] = out[f"scores_{self.branches[0]}"]
        return out

    @torch.no_grad()
    def attribute_attention_maps(self, features: Tensor) -> Tensor:
        """AVT's cross-attention of every attribute over the regions: (B, A, rows, cols), each map summing to 1.

        Uses the AVT sub-net (the attribute queries); a VAT-only model has no attribute queries and raises.
        """
        if "avt" not in self.branches:
            raise ValueError("branches: attribute attention maps need the AVT sub-net")
        regions = self.regions(features)
        _, memory, h_a = self.avt.embed(regions, self.word_vectors())
        _, weights = self.avt.decoder(h_a.expand(regions.shape[0], -1, -1), memory, return_attention=True)
        assert weights is not None
        return weights.view(regions.shape[0], self.num_attributes, *self.grid)


class GlobalCompatibility(nn.Module):
    """The global-feature compatibility baseline (§6): mean of the L2-normalised regions -> LayerNorm -> Linear -> ψ
    (B, A) -> S = ψ zᵀ + β."""

    class_vectors: Tensor
    calibration: Tensor
    unseen: Tensor

    def __init__(self, class_attributes: Tensor, unseen: Sequence[int], grid: tuple[int, int], in_dim: int) -> None:
        super().__init__()
        num_classes, num_attributes = class_attributes.shape
        self.num_classes, self.num_attributes = num_classes, num_attributes
        self.grid, self.in_dim = (int(grid[0]), int(grid[1])), in_dim
        self.branches: tuple[str, ...] = ("global",)
        calibration = torch.full((num_classes,), -1.0)
        calibration[torch.as_tensor(list(unseen), dtype=torch.long)] = 1.0
        self.register_buffer("class_vectors", F.normalize(class_attributes.float(), dim=1))
        self.register_buffer("calibration", calibration)
        self.register_buffer("unseen", torch.as_tensor(list(unseen), dtype=torch.long))
        # LayerNorm + a normal(0, 1) map, so ψ starts on the scale of the sub-nets' ψ (LayerNorm-ed features times
        # W₁ ~ normal(0, 1)); with a default-initialised linear on the pooled unit vectors the scores stay inside the
        # ±1 calibration for thousands of steps and GZSL predicts unseen classes only
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, num_attributes)
        nn.init.normal_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Region features (B, in_dim, rows, cols) -> {"scores", "scores_global", "embedding_global"}."""
        if features.dim() != 4 or tuple(features.shape[1:]) != (self.in_dim, *self.grid):
            raise RegionGridError(f"region features: shape {tuple(features.shape)}, the model expects (B, "
                                  f"{self.in_dim}, {self.grid[0]}, {self.grid[1]})")
        pooled = F.normalize(features.flatten(2), dim=1).mean(dim=2)
        embedding = self.proj(self.norm(pooled))
        scores = embedding @ self.class_vectors.t() + self.calibration
        return {"scores": scores, "scores_global": scores, "embedding_global": embedding}
