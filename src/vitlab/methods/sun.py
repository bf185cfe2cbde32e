"""SUN, self-promoted supervision for few-shot ViTs (Dong et al., ECCV 2022; specs/sun.md): the model pieces.

Three stages (§1): (1) a supervised teacher on the base classes (backbone -> global average pool -> linear);
(2) a new student trained with CE on its global logits + λ · soft CE of its local (C + 1)-way classifier at every
position against the teacher's location-specific labels (:mod:`vitlab.losses.sun`), on spatially consistent views
(:mod:`vitlab.data.sca`); (3) Meta-Baseline meta-tuning (cosine prototypes, learnable temperature).

The engine-free pieces: :func:`patch_features` (any backbone with a final patch map, through
:func:`vitlab.models.feature_map`), :class:`PatchClassifier` (teacher and student), :func:`stage2_loss`,
:class:`MetaBaseline`. The three registered methods on the contract:

- ``sun_teacher`` (stage 1): the ``supervised`` method on the base split, evaluated by few-shot episodes (its
  checkpoint is what ``sun`` loads as the teacher; the plain ``supervised`` method's checkpoint loads too);
- ``sun`` (stage 2): a frozen teacher from ``method.teacher_ckpt``, a new student from scratch, CE + λ · patch loss
  on SCA views;
- ``meta_baseline`` (stage 3): cosine prototypes with a learnable γ (init 10) on episodes of the base split, the
  encoder initialised from ``method.init_ckpt`` (a stage-2 or stage-1 checkpoint).

Every stage's ``evaluate`` embeds the evaluation split once and scores 5-way 1- and 5-shot episodes
(:mod:`vitlab.evaluation.episodes`): ``fs1_acc`` / ``fs5_acc`` with ``fs1_ci95`` / ``fs5_ci95``; best.ckpt is chosen
by ``fs1_acc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from vitlab.config import ConfigError, RunConfig, require
from vitlab.errors import CheckpointError
from vitlab.losses.sun import background_count, patch_targets, sun_loss
from vitlab.methods.base import DataInfo, Method, Progress, register_method
from vitlab.methods.schemas.sun import (  # noqa: F401  (re-exported: the schemas live in a torch-free module)
    CONFIG_PATCH_WEIGHTS,
    EpisodeEvalConfig,
    MetaBaselineConfig,
    SUNConfig,
    SUNTeacherConfig,
)
from vitlab.methods.supervised import Supervised
from vitlab.models.fewshot import feature_map


def patch_features(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The final patch map of ``model`` (a timm-contract backbone, or a vitlab ``ImageClassifier`` around one) as
    tokens (B, N, D), row-major, and their global average pool (B, D).

    The map is :func:`vitlab.models.feature_map`'s (CNNs, Visformer, NesT, LV-ViT, timm ViTs without their prefix
    tokens, iFormer); a backbone without one raises its ``NoFeatureMapError`` naming the model.
    """
    tokens = feature_map(backbone_of(model), x).flatten(2).transpose(1, 2)
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
        raise CheckpointError(f"{source}: the teacher has {teacher.num_classes} classes, the base split has "
                              f"{num_classes}; train the teacher on the same base classes")


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
        raise ConfigError(f"sun: the student has {out['patch_logits'].shape[1]} patches, the teacher "
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


# ---- the registered stages ----------------------------------------------------------------------------------------
def backbone_of(classifier: nn.Module) -> nn.Module:
    """The timm-contract model inside a vitlab ``ImageClassifier`` (or the model itself)."""
    return getattr(classifier, "model", classifier)


def _normalize(classifier: nn.Module, x: Tensor) -> Tensor:
    normalize = getattr(classifier, "normalize", None)
    return normalize(x) if normalize is not None else x


def patch_tokens(classifier: nn.Module, x: Tensor) -> Tensor:
    """Images (B, C, H, W) in [0, 1] -> the final patch map of an ``ImageClassifier`` as tokens (B, N, D), row-major,
    after the classifier's own normalisation (:func:`patch_features`)."""
    return patch_features(classifier, _normalize(classifier, x))[0]


def pooled_embedding(classifier: nn.Module, x: Tensor) -> Tensor:
    """The global average pool of the final map (B, D): what episodes and Meta-Baseline compare."""
    return patch_tokens(classifier, x).mean(dim=1)


def check_patch_map(classifier: nn.Module, data: DataInfo, model_name: str) -> int:
    """The number of patches N of the backbone's final map; no map is a ConfigError naming ``model.name``."""
    from vitlab.models import NoFeatureMapError

    was_training = classifier.training
    classifier.eval()
    try:
        with torch.no_grad():
            tokens = patch_tokens(classifier, torch.zeros(1, data.channels, data.img_size, data.img_size))
    except NoFeatureMapError as exc:
        raise ConfigError(f"model.name: {model_name} has no final patch map, which SUN needs ({exc})") from None
    finally:
        classifier.train(was_training)
    return int(tokens.shape[1])


def fewshot_evaluate(classifier: nn.Module, loader: Any, fabric: Any, ecfg: EpisodeEvalConfig) -> dict[str, float]:
    """Embed the evaluation split once (every process embeds all of it: episodes need every class) and score
    ``ecfg.episodes`` cosine-prototype episodes per shot count: ``fs{k}_acc`` and ``fs{k}_ci95`` in %."""
    from vitlab.data.episodes import EpisodeShape
    from vitlab.evaluation.episodes import embed_dataset, evaluate_episodes

    dataset = loader.dataset
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    device = getattr(fabric, "device", "cpu")
    was_training = classifier.training
    classifier.eval()
    try:
        features, labels = embed_dataset(lambda x: pooled_embedding(classifier, x), dataset,
                                         batch_size=getattr(loader, "batch_size", None) or 256, device=device)
    finally:
        classifier.train(was_training)
    out: dict[str, float] = {}
    for shots in ecfg.shots:
        shape = EpisodeShape(ecfg.ways, shots, ecfg.queries)
        result = evaluate_episodes(features, labels, shape, ecfg.episodes, ecfg.seed)["cosine"]
        out[f"fs{shots}_acc"], out[f"fs{shots}_ci95"] = result.mean, result.ci95
    return out


def _fewshot_datasets(cfg: RunConfig, split: str, train_aug: bool) -> dict[str, Dataset]:
    from vitlab.data import build_dataset

    return {"train": build_dataset(cfg.data, "train", train=train_aug),
            "test": build_dataset(cfg.data, split, train=False)}


@register_method("sun_teacher")
class SUNTeacher(Supervised):
    """Stage 1: supervised training on the base split (backbone -> GAP -> linear), few-shot evaluation on novel
    episodes. Also the Meta-Baseline baseline's pretraining (the same model, more epochs)."""

    config_class = SUNTeacherConfig
    monitor = ("fs1_acc", True)

    @property
    def fcfg(self) -> SUNTeacherConfig:
        return self.mcfg  # type: ignore[return-value]

    @classmethod
    def build_datasets(cls, cfg: RunConfig) -> dict[str, Dataset]:
        return _fewshot_datasets(cfg, cls.method_config(cfg).fewshot.split, train_aug=True)  # type: ignore[attr-defined]

    def evaluate(self, loaders: Mapping[str, Any], fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        return fewshot_evaluate(model if model is not None else self.model, loaders["test"], fabric,
                                self.fcfg.fewshot)


class SCAPairs(Dataset):
    """Items of a base split (no augmentation of its own) as spatially consistent pairs:
    ``{"image": student view, "teacher_image": teacher view, "label"}`` (SCA, §2.4).

    ``views="shared"`` (the ablation without SCA) gives both networks the student's augmented view.
    """

    def __init__(self, base: Any, sca: Any, views: str) -> None:
        self.base, self.sca, self.views = base, sca, views

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        teacher, student = self.sca(item["image"])
        return {"image": student, "teacher_image": student if self.views == "shared" else teacher,
                "label": item["label"]}

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "sca", "views"):
            raise AttributeError(name)
        return getattr(self.base, name)


class SUNStudent(nn.Module):
    """The student: an ``ImageClassifier`` (``model``: backbone, global C-way head) and the local (C + 1)-way head."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.local_head = nn.Linear(int(model.num_features), num_classes + 1)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (global logits (B, C) from the pooled map, patch logits (B, N, C + 1))."""
        tokens = patch_tokens(self.model, x)
        head = backbone_of(self.model).get_classifier()  # type: ignore[operator]
        return head(tokens.mean(dim=1)), self.local_head(tokens)


@register_method("sun")
class SUN(Method[SUNConfig]):
    """Stage 2 (§2.2–2.4): frozen teacher, new student, CE + λ · patch loss with BGF, on SCA views."""

    monitor = ("fs1_acc", True)

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        from vitlab.engine.checkpoint import load_frozen_teacher
        from vitlab.models.classifier import build_classifier

        mcfg = self.mcfg
        require(mcfg.top_k < data.num_classes, "method.top_k", f"fewer than the {data.num_classes} base classes "
                "(pitfall 6)", mcfg.top_k)
        model = build_classifier(cfg.model, data.num_classes, data.channels, data.img_size, data.mean, data.std)
        self.patches = check_patch_map(model, data, cfg.model.name)
        self.student = SUNStudent(model, data.num_classes)
        teacher = load_frozen_teacher(mcfg.teacher_ckpt, "method.teacher_ckpt")
        classes = int(getattr(teacher, "num_classes", 0))
        if classes != data.num_classes:
            raise ConfigError(f"method.teacher_ckpt: the teacher {mcfg.teacher_ckpt} has {classes} classes, the "
                              f"base split of {cfg.data.name} has {data.num_classes}; train the teacher on the same "
                              "base classes")
        self.teacher = teacher
        self.patch_weight = mcfg.weight_for(cfg.data.name)
        self.bg_count = background_count(self.patches, mcfg.bg_ratio)

    @classmethod
    def build_datasets(cls, cfg: RunConfig) -> dict[str, Dataset]:
        from vitlab.data.sca import SpatialConsistentAugmentation

        mcfg = cls.method_config(cfg)
        datasets = _fewshot_datasets(cfg, mcfg.fewshot.split, train_aug=False)
        base = datasets["train"]
        sca = SpatialConsistentAugmentation(mcfg.sca, cfg.data.img_size, cfg.data.channels,
                                            base.mean, base.std)  # type: ignore[attr-defined]
        datasets["train"] = SCAPairs(base, sca, mcfg.views)
        return datasets

    def train(self, mode: bool = True) -> SUN:
        super().train(mode)
        self.teacher.eval()  # frozen: never an EMA, BN statistics fixed (pitfall 7)
        return self

    def eval_model(self) -> nn.Module:
        return self.student.model

    def trainable_model(self) -> nn.Module:
        return self.student

    def forward(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        mcfg = self.mcfg
        with torch.no_grad():
            teacher_tokens = patch_tokens(self.teacher, batch["teacher_image"])
            scores = backbone_of(self.teacher).get_classifier()(teacher_tokens)  # type: ignore[operator]
        logits, patch_logits = self.student(batch["image"])
        if patch_logits.shape[1] != scores.shape[1]:
            raise ConfigError(f"method.teacher_ckpt: the teacher has {scores.shape[1]} patches, the student "
                              f"{patch_logits.shape[1]}; both need the same final map")
        targets = patch_targets(scores.float(), mcfg.top_k, self.bg_count, mcfg.smoothing, mcfg.patch_target,
                                mcfg.official_background_index)
        out = sun_loss(logits, batch["label"], patch_logits, targets, self.patch_weight, mcfg.patch_reduction)
        out = dict(out)
        loss = out.pop("loss")
        result = {k: v.detach() for k, v in out.items()}
        with torch.no_grad():
            result["acc"] = (logits.argmax(-1) == batch["label"]).float().mean()
        result["loss"] = loss
        return result

    def evaluate(self, loaders: Mapping[str, Any], fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        return fewshot_evaluate(model if model is not None else self.eval_model(), loaders["test"], fabric,
                                self.mcfg.fewshot)


class EpisodeDataset(Dataset):
    """One item = one whole episode of ``base``: ``{"support": (W·S, C, H, W), "query": (W·Q, C, H, W)}``, class-major.

    The episode id of an item is drawn from torch's generator, which the engine seeds per (run seed, epoch, index)
    (``SeededItems``): new episodes every epoch, the same ones on any process count, no engine hook needed. The
    members are chosen by the hash sampler (:func:`vitlab.data.episodes.sample_episodes`) with ``seed``.
    """

    def __init__(self, base: Any, ways: int, shots: int, queries: int, episodes: int, seed: int) -> None:
        from vitlab.data.episodes import EpisodeShape, check_episode_source, class_members

        self.base = base
        self.shape = EpisodeShape(ways, shots, queries)
        self.members = class_members(base.targets)
        check_episode_source(self.members, self.shape, getattr(base, "classes", None), source="method.ways/shots")
        self.episodes, self.seed = episodes, seed

    def __len__(self) -> int:
        return self.episodes

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        from vitlab.data.episodes import sample_episodes

        episode = int(torch.randint(0, 2**62, ()))
        block = sample_episodes(self.members, self.shape, [episode], self.seed)[0]  # (W, S + Q)
        images = torch.stack([self.base[int(i)]["image"] for i in block.reshape(-1)])
        images = images.view(self.shape.ways, self.shape.per_class, *images.shape[1:])
        s = self.shape.shots
        return {"support": images[:, :s].flatten(0, 1), "query": images[:, s:].flatten(0, 1)}

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "shape", "members", "episodes", "seed"):
            raise AttributeError(name)
        return getattr(self.base, name)


class CosinePrototypes(nn.Module):
    """The meta-tuned model: ``model`` (an ``ImageClassifier``; its pooled final map is the feature) and γ."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))

    def forward(self, support: Tensor, query: Tensor, ways: int) -> Tensor:
        """support (E, W·S, C, H, W) class-major, query (E, M, C, H, W) -> logits γ·cos (E, M, W)."""
        episodes, n_support = support.shape[:2]
        features = pooled_embedding(self.model, torch.cat([support.flatten(0, 1), query.flatten(0, 1)]))
        support_f = features[:episodes * n_support].view(episodes, ways, n_support // ways, -1)
        query_f = features[episodes * n_support:].view(episodes, query.shape[1], -1)
        prototypes = F.normalize(support_f.mean(dim=2), dim=-1)
        return self.temperature * torch.bmm(F.normalize(query_f, dim=-1), prototypes.transpose(1, 2))


@register_method("meta_baseline")
class MetaBaselineMethod(Method[MetaBaselineConfig]):
    """Stage 3: Meta-Baseline meta-tuning of a stage-2 (or stage-1) encoder; no classifier is trained."""

    monitor = ("fs1_acc", True)

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        from vitlab.engine.checkpoint import load_checkpoint
        from vitlab.models.classifier import build_classifier

        mcfg = self.mcfg
        model = build_classifier(cfg.model, data.num_classes, data.channels, data.img_size, data.mean, data.std)
        check_patch_map(model, data, cfg.model.name)
        if not Path(mcfg.init_ckpt).is_file():
            raise ConfigError(f"method.init_ckpt: {mcfg.init_ckpt} not found (a sun or sun_teacher checkpoint)")
        state = load_checkpoint(mcfg.init_ckpt)["method"]
        prefix = next((p for p in ("student.model.", "model.") if any(k.startswith(p) for k in state)), None)
        if prefix is None:
            raise ConfigError(f"method.init_ckpt: {mcfg.init_ckpt} holds no classifier (expected a sun, sun_teacher "
                              "or supervised checkpoint)")
        own = model.state_dict()
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        # the backbone and normalisation; the source's class head is dropped when its class count differs
        weights = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in weights and not k.startswith("model.head")]
        if missing:
            raise ConfigError(f"method.init_ckpt: {mcfg.init_ckpt} does not fit model {cfg.model.name} (missing "
                              f"{missing[:3]})")
        model.load_state_dict(weights, strict=False)
        self.net = CosinePrototypes(model, mcfg.temperature)

    @classmethod
    def build_datasets(cls, cfg: RunConfig) -> dict[str, Dataset]:
        mcfg = cls.method_config(cfg)
        datasets = _fewshot_datasets(cfg, mcfg.fewshot.split, train_aug=True)
        datasets["train"] = EpisodeDataset(datasets["train"], mcfg.ways, mcfg.shots, mcfg.queries,
                                           mcfg.episodes_per_epoch, mcfg.episode_seed)
        return datasets

    def batch_items(self, batch: Any) -> int:
        return int(batch["support"].shape[0] * (batch["support"].shape[1] + batch["query"].shape[1]))

    def eval_model(self) -> nn.Module:
        return self.net.model

    def trainable_model(self) -> nn.Module:
        return self.net

    def forward(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        ways, queries = self.mcfg.ways, self.mcfg.queries
        logits = self.net(batch["support"], batch["query"], ways)  # (E, W·Q, W)
        labels = torch.arange(ways, device=logits.device).repeat_interleave(queries).expand(logits.shape[0], -1)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        with torch.no_grad():
            acc = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "acc": acc, "temperature": self.net.temperature.detach()}

    def evaluate(self, loaders: Mapping[str, Any], fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        return fewshot_evaluate(model if model is not None else self.eval_model(), loaders["test"], fabric,
                                self.mcfg.fewshot)
