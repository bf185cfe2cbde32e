"""The ``method`` section of TransZero++ (:mod:`vitlab.methods.transzero`): its schema, without torch, so that a
recipe's mistake is reported before the method loads (docs/engine.md, "Methods and their schemas")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from vitlab.config import MethodConfig, require

if TYPE_CHECKING:
    from vitlab.losses.transzero import TransZeroLossWeights

BRANCH_SETS = (["avt", "vat"], ["avt"], ["vat"], ["global"])


@dataclass
class ExtractConfig:
    """Region-feature extraction for ``xlsa17`` (§2.2.2): a timm / vitlab backbone's final map of the centre-cropped
    images, once, before training. As published: ResNet-101 (ImageNet weights from ``checkpoint``) at 448 px, 14×14."""

    model: str = "resnet101"
    checkpoint: str = ""  # a state-dict file of the backbone's ImageNet weights (no download); "" = random init
    img_size: int = 448  # short side resized to this, then a centre crop of this size
    batch_size: int = 16
    shard_size: int = 1024


@dataclass
class TransZeroConfig(MethodConfig):
    """TransZero++ settings (specs/transzero.md §3; code names in comments). Defaults: the CUB GZSL column."""

    name: str = "transzero"
    branches: list[str] = field(default_factory=lambda: ["avt", "vat"])  # [avt, vat] | [avt] | [vat] | [global]
    dim: int = 300  # tf_common_dim d
    ffn_dim: int = 512  # tf_dim_feedforward
    dropout: float = 0.4  # tf_dropout
    self_attention: bool = True  # tf_SAtt: decoder self-attention on the queries
    normalize_v: bool = False  # normalize_V: re-normalise the word vectors every forward (AWA2)
    vat_init: Literal["zeros", "normal"] = "zeros"  # tf_v2s_init of W₁′
    alpha: float = 0.9  # weight_s2v: AVT weight of the fused score
    lambda_sc: float = 0.2  # lambda_
    lambda_ar: float = 1e-4  # lambda_reg
    lambda_vat: float = 0.1  # lambda_v2s
    lambda_f: float = 1e-3  # lambda_cst_reg_att
    lambda_p: float = 1e-2  # lambda_cst_reg_cls
    sampler: Literal["uniform", "balanced"] = "uniform"  # balanced: SUN and AWA2 (§3, "Sampling"); data.batch_size 1
    balanced_batch: int = 50  # the balanced sampler's nominal batch (40 images for AWA2's 40 seen classes)
    dataset: str = ""  # xlsa17: CUB | SUN | AWA2 (path prefix of image_files; AWA2 clips negative attributes)
    features: str = ""  # xlsa17: folder of the region-feature shards
    images: str = ""  # xlsa17: folder the image_files paths are relative to (only to extract features)
    word_vectors: str = ""  # xlsa17: the official <DS>_attribute.pkl, or "minilm"
    grid: list[int] = field(default_factory=list)  # expected region grid [rows, cols] ([14, 14] at 448 px); [] = any
    legacy_params: bool = False  # also build the official code's dead tensors (checkpoint layout, counts)
    extract: ExtractConfig = field(default_factory=ExtractConfig)

    def validate(self) -> None:
        require(self.branches in BRANCH_SETS, "method.branches", "[avt, vat], [avt], [vat] or [global]",
                self.branches)
        require(self.dim >= 1 and self.ffn_dim >= 1, "method.dim", "positive widths", (self.dim, self.ffn_dim))
        require(0.0 <= self.dropout < 1.0, "method.dropout", "a value in [0, 1)", self.dropout)
        require(0.0 <= self.alpha <= 1.0, "method.alpha", "a value in [0, 1]", self.alpha)
        require(len(self.grid) in (0, 2) and all(g >= 1 for g in self.grid), "method.grid",
                "[] or [rows, cols]", self.grid)
        require(self.balanced_batch >= 1, "method.balanced_batch", "an integer >= 1", self.balanced_batch)
        for key in ("lambda_sc", "lambda_ar", "lambda_vat", "lambda_f", "lambda_p"):
            require(getattr(self, key) >= 0, f"method.{key}", "a weight >= 0", getattr(self, key))

    def loss_weights(self) -> TransZeroLossWeights:
        from vitlab.losses.transzero import TransZeroLossWeights  # imports torch: only when the method is built

        return TransZeroLossWeights(self.lambda_sc, self.lambda_ar, self.lambda_vat, self.lambda_f, self.lambda_p)
