"""SUN, self-promoted supervision for few-shot ViTs (Dong et al., ECCV 2022; specs/sun.md): the model pieces.

Three stages (§1): (1) a supervised teacher on the base classes (backbone -> global average pool -> linear);
(2) a new student trained with CE on its global logits + λ · soft CE of its local (C + 1)-way classifier at every
position against the teacher's location-specific labels (:mod:`vitlab.losses.sun`), on spatially consistent views
(:mod:`vitlab.data.sca`); (3) Meta-Baseline meta-tuning (cosine prototypes, learnable temperature).

This file holds what does not depend on the engine: :func:`patch_features` (any backbone with a final patch map),
:class:`PatchClassifier` (teacher and student), :func:`stage2_loss`, :class:`MetaBaseline` and :class:`SUNConfig`.
The method wrapper that the engine runs joins them once the method contract (issue 13) settles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.data.sca import SCAConfig
from vitlab.losses.sun import PatchReduction, PatchTarget, background_count, patch_targets, sun_loss

# token_label_weight of the official configs, used only with use_config_weight (pitfall 1).
CONFIG_PATCH_WEIGHTS = {"mini_imagenet": 0.5, "cifar_fs": 0.75, "tiered_imagenet": 0.75}


@dataclass
class SUNConfig:
    """Stage-2 settings (specs/sun.md §2.2, §2.3, §7). Defaults: the official code's numbers."""

    top_k: int = 5  # teacher classes marked `on` per foreground patch; must be < C (2 for the 5-class digits plan)
    bg_ratio: float = 0.4  # background patches per image = round(bg_ratio · N): 10 of 25, 6 of 16
    smoothing: float = 0.1  # on = 1 − s + s/C, off = s/C
    patch_weight: float = 0.5  # λ, hard-coded 0.5 in the official code
    use_config_weight: bool = False  # true: λ from the official per-data-set configs (0.75 for CIFAR-FS / tiered)
    patch_reduction: PatchReduction = "mean"  # mean over B·N patches (code); "sum" over patches (paper)
    patch_target: PatchTarget = "multi_hot"  # code's smoothed multi-hot; "teacher_prob_topk" (paper reading)
    official_background_index: bool = False  # true: background `on` at class 1, as the official code does
    sca: SCAConfig = field(default_factory=SCAConfig)

    def weight_for(self, dataset: str) -> float:
        return CONFIG_PATCH_WEIGHTS.get(dataset, self.patch_weight) if self.use_config_weight else self.patch_weight


class PatchMapError(ValueError):
    """The backbone has no final patch map (SUN needs one)."""


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "model", model)  # ImageClassifier wraps the timm model as .model


def patch_features(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The final patch map of ``model`` as tokens (B, N, D), row-major, and their global average pool (B, D).

    ``model.forward_features`` may return a map (B, D, H, W) (CNNs, Visformer, NesT) or tokens (B, P + N, D) with
    P prefix tokens (timm's ``num_prefix_tokens``) and N a square number (ViTs). Anything else is a
    :class:`PatchMapError` naming the model.
    """
    features = model.forward_features(x)  # type: ignore[operator]
    name = type(_inner(model)).__name__
    if features.dim() == 4:
        tokens = features.flatten(2).transpose(1, 2)
    elif features.dim() == 3:
        prefix = int(getattr(_inner(model), "num_prefix_tokens", 0))
        tokens = features[:, prefix:]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1] or side == 0:
            raise PatchMapError(f"model {name}: {tokens.shape[1]} patch tokens after {prefix} prefix tokens do not "
                                "form a square map; SUN needs a backbone with a final patch map")
    else:
        raise PatchMapError(f"model {name}: forward_features gives {tuple(features.shape)}, no patch map; SUN needs a "
                            "backbone whose forward_features returns (B, D, H, W) or tokens (B, N, D)")
    return tokens, tokens.mean(dim=1)


class PatchClassifier(nn.Module):
    """Backbone -> final map -> GAP -> linear (C) (§2.1), plus, for the SUN student, a local (C + 1)-way linear
    classifier at every position (§2.2).

    ``backbone`` is a timm-contract model (its own head is not used) with ``num_features`` = D.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, local_head: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        dim = int(backbone.num_features)  # type: ignore[arg-type]
        self.head = nn.Linear(dim, num_classes)
        self.local_head = nn.Linear(dim, num_classes + 1) if local_head else None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x (B, C, H, W) -> {"logits": (B, C), "patch_logits": (B, N, C + 1) (student only), "pooled": (B, D)}."""
        tokens, pooled = patch_features(self.backbone, x)
        out = {"logits": self.head(pooled), "pooled": pooled}
        if self.local_head is not None:
            out["patch_logits"] = self.local_head(tokens)
        return out

    @torch.no_grad()
    def patch_class_logits(self, x: Tensor) -> Tensor:
        """The teacher's patch scores (B, N, C): its global classifier applied at every position (§2.2)."""
        tokens, _ = patch_features(self.backbone, x)
        return self.head(tokens)

    def embed(self, x: Tensor) -> Tensor:
        """Pooled features (B, D): what episodes and Meta-Baseline use."""
        return patch_features(self.backbone, x)[1]


def check_teacher(teacher: PatchClassifier, num_classes: int, source: str = "sun.teacher") -> None:
    """A teacher trained for another class count is a one-line error naming the setting."""
    if teacher.num_classes != num_classes:
        raise ValueError(f"{source}: the teacher has {teacher.num_classes} classes, the base split has {num_classes}; "
                         "train the teacher on the same base classes")


def stage2_loss(student: PatchClassifier, teacher: PatchClassifier, student_images: Tensor, teacher_images: Tensor,
                labels: Tensor, cfg: SUNConfig, patch_weight: float | None = None) -> dict[str, Tensor]:
    """SUN's stage-2 loss on one batch of spatially consistent views (B, C, H, W) each; labels (B,).

    The teacher (frozen, eval mode, never an EMA of the student) scores its view's patches; :func:`patch_targets`
    turns them into labels; the student's global and local logits give CE + λ · patch loss.
    """
    teacher.eval()
    scores = teacher.patch_class_logits(teacher_images)
    out = student(student_images)
    if out["patch_logits"].shape[1] != scores.shape[1]:
        raise ValueError(f"sun: the student has {out['patch_logits'].shape[1]} patches, the teacher "
                         f"{scores.shape[1]}; both need the same final map")
    targets = patch_targets(scores, cfg.top_k, background_count(scores.shape[1], cfg.bg_ratio), cfg.smoothing,
                            cfg.patch_target, cfg.official_background_index)
    weight = cfg.patch_weight if patch_weight is None else patch_weight
    return sun_loss(out["logits"], labels, out["patch_logits"], targets, weight, cfg.patch_reduction)


class MetaBaseline(nn.Module):
    """Meta-Baseline (§2.5): logits = γ · cos(query feature, normalised mean support feature), γ learnable (init 10).

    ``encoder(x) -> (B, D)`` pooled features (e.g. :meth:`PatchClassifier.embed`).
    """

    def __init__(self, encoder: nn.Module, temperature: float = 10.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))

    def forward(self, support: Tensor, query: Tensor, ways: int) -> Tensor:
        """support (E, W·S, C, H, W) class-major, query (E, M, C, H, W) -> logits (E, M, W)."""
        episodes, n_support = support.shape[:2]
        n_query = query.shape[1]
        features = self.encoder(torch.cat([support.flatten(0, 1), query.flatten(0, 1)]))
        support_features = features[:episodes * n_support].view(episodes, ways, n_support // ways, -1)
        query_features = features[episodes * n_support:].view(episodes, n_query, -1)
        prototypes = F.normalize(support_features.mean(dim=2), dim=-1)
        return self.temperature * torch.bmm(F.normalize(query_features, dim=-1), prototypes.transpose(1, 2))

