"""Mugs: multi-granular self-supervised pretraining (Zhou et al., 2022, arXiv 2203.14415; specs/mugs.md).

A student and an EMA teacher (a ViT backbone, one relation block, three heads) learn from three supervisions at once:
instance discrimination (IDS), local-group discrimination (LGDS) and group discrimination (GDS); the losses live in
:mod:`vitlab.losses.mugs`. One training step (``training_step``), top to bottom:

1. the teacher encodes its 2 global crops; the student its own 2 global crops and the local crops;
2. LGDS: every crop's query (the mean of the last block's tokens) takes its top-k neighbours from its network's
   memory, and the relation block aggregates [query, neighbours] into the local-group feature;
3. the three losses over the 22 (teacher, student) crop pairs, weighted and divided by the weight sum; their queues
   and the GDS centre are updated with gathered teacher features;
4. the memories take the patch-token means of the first global crop (the student's only when weakly augmented);
5. backward, per-parameter gradient clipping, no gradient for the prototypes during the first epochs, AdamW step;
6. ``on_optimizer_step``: the teacher moves towards the student with the scheduled momentum.

Evaluation (``evaluate``): weighted k-NN and a linear probe on the teacher backbone's features, without the relation
block (specs/mugs.md §3).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.data import Dataset

from vitlab.config import AugConfig, ConfigError, DataConfig, RunConfig
from vitlab.data.batch_aug import BatchMultiCrop
from vitlab.data.dataset import DataError
from vitlab.data.loader import build_loader
from vitlab.data.multicrop import ByteImageDataset, MultiCropDataset, MultiCropTransform
from vitlab.engine.ema import copy_buffers_, ema_update_
from vitlab.engine.schedules import cosine_schedule
from vitlab.evaluation.frozen_features import evaluate_frozen_features
from vitlab.evaluation.linear_probe import has_vit_tokens
from vitlab.losses.distributed import rank, world_size
from vitlab.losses.mugs import GroupDiscriminationLoss, NeighbourMemory, QueueInfoNCELoss
from vitlab.methods.base import DataInfo, Method, OptimizerBuilder, Progress, StepHelper, register_method
from vitlab.methods.schemas.mugs import (  # noqa: F401  (re-exported: the schema lives in a torch-free module)
    CROP_BACKENDS,
    LGDS_QUERIES,
    CropBackend,
    CropConfig,
    GroupConfig,
    InstanceConfig,
    LGDSQuery,
    LocalGroupConfig,
    MugsConfig,
    MugsEvalConfig,
)
from vitlab.models.classifier import ImageClassifier, build_classifier


# ---- heads and networks ----------------------------------------------------------------------------------------------
def _mlp(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, bias: bool) -> nn.Sequential:
    """Linear layers with GELU between them (no BatchNorm: ``--use_bn_in_head false``)."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers.append(nn.Linear(in_dim if i == 0 else hidden_dim, out_dim if i == num_layers - 1 else hidden_dim,
                                bias=bias))
        if i < num_layers - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def _init_truncated(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ProjectionPredictionHead(nn.Module):
    """IDS / LGDS head (§2.3): projector d → h → h → out (no biases, GELU), L2-normalised; the student adds a
    predictor out → p → out on the normalised projection, L2-normalised again. (B, d) -> (B, out)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, predictor_hidden_dim: int | None) -> None:
        super().__init__()
        self.projector = _mlp(3, in_dim, hidden_dim, out_dim, bias=False)
        self.projector.apply(_init_truncated)
        # The official head initialises only the projector; the predictor keeps PyTorch's default initialisation.
        self.predictor = (_mlp(2, out_dim, predictor_hidden_dim, out_dim, bias=False)
                          if predictor_hidden_dim else None)

    def forward(self, x: Tensor) -> Tensor:
        projection = F.normalize(self.projector(x), dim=-1)
        if self.predictor is None:
            return projection
        return F.normalize(self.predictor(projection), dim=-1)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation per output row: W = g · v / ‖v‖ (g initialised to 1)."""

    def __init__(self, in_dim: int, out_dim: int, train_norm: bool) -> None:
        super().__init__()
        reference = nn.Linear(in_dim, out_dim, bias=False)
        self.weight_v = nn.Parameter(reference.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=train_norm)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True))


class GroupHead(nn.Module):
    """GDS head (§2.5): MLP d → h → h → bottleneck (biases, GELU), L2-normalise, weight-normalised prototypes.
    (B, d) -> (B, prototypes) logits."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, prototypes: int, norm_last_layer: bool):
        super().__init__()
        self.projector = _mlp(3, in_dim, hidden_dim, bottleneck_dim, bias=True)
        self.projector.apply(_init_truncated)
        self.last_layer = WeightNormLinear(bottleneck_dim, prototypes, train_norm=not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.projector(x), dim=-1))


def relation_block(dim: int, num_heads: int) -> Block:
    """The local-group aggregator (§2.4): a standard ViT block, mlp ratio 4, qkv bias, LN eps 1e-6, no drop path.
    12·d² + 13·d parameters."""
    return Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))  # type: ignore[arg-type]


@dataclass
class MugsFeatures:
    """The outputs of one network over a list of crops (view-major)."""

    instance: Tensor | None  # (V·B, out)
    local_group: Tensor | None  # (V·B, out)
    group: Tensor | None  # (V·B, prototypes)
    first_patch_mean: Tensor | None  # (B, D) normed patch-token mean of view 0 (the memory write)


class MugsNetwork(nn.Module):
    """Backbone + relation block + the three heads; the student and the teacher are two of these (§2.1).

    The teacher has no predictors (``predictor_hidden_dim=None``).
    """

    def __init__(self, backbone: ImageClassifier, width: int, num_heads: int, cfg: MugsConfig,
                 predictor_hidden_dim: int | None) -> None:
        super().__init__()
        w_ids, w_lgds, w_gds = cfg.loss_weights
        self.backbone = backbone
        self.relation = relation_block(width, num_heads) if w_lgds > 0 else None
        self.instance_head = (ProjectionPredictionHead(width, cfg.head_hidden_dim, cfg.head_out_dim,
                                                       predictor_hidden_dim) if w_ids > 0 else None)
        self.local_group_head = (ProjectionPredictionHead(width, cfg.head_hidden_dim, cfg.head_out_dim,
                                                          predictor_hidden_dim) if w_lgds > 0 else None)
        self.group_head = (GroupHead(width, cfg.head_hidden_dim, cfg.gds.bottleneck_dim, cfg.gds.prototypes,
                                     cfg.gds.norm_last_layer) if w_gds > 0 else None)
        self.query_mode = cfg.lgds.query

    def tokens(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> last-block tokens before the final norm (B, N, D)."""
        vit: Any = self.backbone.model
        return vit.blocks(vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(self.backbone.normalize(x))))))

    def forward(self, crops: list[Tensor], memory: NeighbourMemory | None) -> MugsFeatures:
        """crops: tensors (B_i, C, H, W) of equal batch B, same-size crops adjacent (they run as one batch)."""
        groups: list[list[Tensor]] = []
        for crop in crops:
            if groups and groups[-1][0].shape[-2:] == crop.shape[-2:]:
                groups[-1].append(crop)
            else:
                groups.append([crop])
        batch = crops[0].shape[0]
        cls_parts, group_parts, first_patch_mean = [], [], None
        for group in groups:
            x = torch.cat(group)
            if self.relation is None and not has_vit_tokens(self.backbone.model):
                cls_parts.append(self.backbone.embed(x))
                continue
            vit: Any = self.backbone.model
            prenorm = self.tokens(x)
            normed = vit.norm(prenorm)
            cls_parts.append(normed[:, 0])
            patch_mean = normed[:, vit.num_prefix_tokens:].mean(dim=1)
            if first_patch_mean is None:
                first_patch_mean = patch_mean[:batch].detach()
            if self.relation is not None:
                if memory is None:
                    raise ValueError("MugsNetwork: LGDS is on but no neighbour memory was given")
                query = prenorm.mean(dim=1) if self.query_mode == "prenorm_all_tokens" else patch_mean
                neighbours = memory.neighbours(query.detach())  # (b, k, D), keys = values = stored vectors
                aggregated = self.relation(torch.cat([query.unsqueeze(1), neighbours], dim=1))
                group_parts.append(vit.norm(aggregated[:, 0]))
        features = torch.cat(cls_parts)
        return MugsFeatures(
            instance=self.instance_head(features) if self.instance_head is not None else None,
            local_group=(self.local_group_head(torch.cat(group_parts)) if self.local_group_head is not None
                         else None),
            group=self.group_head(features) if self.group_head is not None else None,
            first_patch_mean=first_patch_mean)


def _eval_data(cfg: RunConfig, name: str | None) -> DataConfig:
    """The run's data section for an evaluation set: no augmentation, every training image."""
    return dataclasses.replace(cfg.data, name=name or cfg.data.name, train_per_class=None, aug=AugConfig())


def crop_sizes(cfg: RunConfig) -> tuple[int, int]:
    crops = Mugs.method_config(cfg).crops
    return (crops.global_size or cfg.data.img_size), crops.local_size


# ---- the method ------------------------------------------------------------------------------------------------------
@register_method("mugs")
class Mugs(Method[MugsConfig]):
    """IDS + LGDS + GDS pretraining of any ViT backbone (GDS / IDS alone also take any timm backbone)."""

    automatic_optimization = False
    monitor = ("knn_top1", True)

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        mcfg = self.mcfg
        global_size, local_size = crop_sizes(cfg)
        backbone = self._build_backbone(cfg, data, global_size)
        vit: Any = backbone.model
        width = int(backbone.num_features)
        uses_lgds = mcfg.loss_weights[1] > 0
        if uses_lgds and not has_vit_tokens(vit):
            raise ConfigError(f"method.loss_weights: LGDS (the second weight) needs a ViT backbone with patch tokens "
                              f"and a class token (timm VisionTransformer); {cfg.model.name} has none: use a vit_* / "
                              "deit_* model or set method.loss_weights=[1,0,1]")
        self._check_crop_sizes(cfg, vit, global_size, local_size)
        num_heads = int(getattr(vit.blocks[0].attn, "num_heads", 1)) if has_vit_tokens(vit) else 1
        self.student = MugsNetwork(backbone, width, num_heads, mcfg, mcfg.predictor_hidden_dim)
        self.teacher = MugsNetwork(copy.deepcopy(backbone), width, num_heads, mcfg, None)
        self._copy_student_to_teacher()
        self.teacher.requires_grad_(False)

        global_batch = cfg.data.batch_size * world_size()
        for key, size in (("ids.queue_size", mcfg.ids.queue_size), ("lgds.queue_size", mcfg.lgds.queue_size),
                          ("lgds.memory_size", mcfg.lgds.memory_size)):
            enabled = mcfg.loss_weights[0] > 0 if key.startswith("ids") else uses_lgds
            if enabled and size % global_batch != 0:
                below = (size // global_batch) * global_batch
                raise ConfigError(f"method.{key}: got {size}, expected a multiple of the global batch {global_batch} "
                                  f"(data.batch_size {cfg.data.batch_size} x {world_size()} processes), e.g. "
                                  f"{below or global_batch} or {below + global_batch}")
        self.instance_loss = (QueueInfoNCELoss(mcfg.head_out_dim, mcfg.ids.queue_size, mcfg.ids.temperature)
                              if mcfg.loss_weights[0] > 0 else None)
        self.local_group_loss = (QueueInfoNCELoss(mcfg.head_out_dim, mcfg.lgds.queue_size, mcfg.lgds.temperature)
                                 if uses_lgds else None)
        self.group_loss = (GroupDiscriminationLoss(mcfg.gds.prototypes, mcfg.gds.student_temp,
                                                   mcfg.gds.center_momentum) if mcfg.loss_weights[2] > 0 else None)
        self.student_memory = (NeighbourMemory(mcfg.lgds.memory_size, width, mcfg.lgds.top_k,
                                               mcfg.lgds.reproduce_pointer_skip) if uses_lgds else None)
        self.teacher_memory = (NeighbourMemory(mcfg.lgds.memory_size, width, mcfg.lgds.top_k,
                                               mcfg.lgds.reproduce_pointer_skip) if uses_lgds else None)
        c = mcfg.crops
        try:
            self.batch_crops = (BatchMultiCrop(global_size, local_size, c.local_number, c.global_scale,
                                               c.local_scale, c.strong_prob, c.hflip, data.channels, data.mean,
                                               data.std, c.rand_augment, c.random_erasing)
                                if c.backend == "batch" else None)
        except DataError as exc:  # a setting the batched crops cannot take: a config error naming its key
            raise ConfigError(str(exc)) from None
        self._crop_calls = (-1, 0)  # (step, batches cropped in it): micro-batches of one step draw different crops

    # ---- construction helpers ----------------------------------------------------------------------------------------
    @staticmethod
    def _build_backbone(cfg: RunConfig, data: DataInfo, global_size: int) -> ImageClassifier:
        """The recipe's backbone without a classifier; ViTs take every crop size (bicubic position embeddings)."""
        kwargs = {**cfg.model.kwargs, "num_classes": 0}
        try:
            model_cfg = dataclasses.replace(cfg.model, kwargs={**kwargs, "dynamic_img_size": True})
            return build_classifier(model_cfg, 0, data.channels, global_size, data.mean, data.std)
        except (ConfigError, TypeError):  # not a ViT: no dynamic_img_size argument
            model_cfg = dataclasses.replace(cfg.model, kwargs=kwargs)
            return build_classifier(model_cfg, 0, data.channels, global_size, data.mean, data.std)

    @staticmethod
    def _check_crop_sizes(cfg: RunConfig, vit: nn.Module, global_size: int, local_size: int) -> None:
        patch = getattr(getattr(vit, "patch_embed", None), "patch_size", None)
        if patch is None:
            return
        side = int(patch[0]) if isinstance(patch, (tuple, list)) else int(patch)
        for key, size in (("crops.global_size", global_size), ("crops.local_size", local_size)):
            if size % side != 0 or size < side:
                low = max(side, size // side * side)
                raise ConfigError(f"method.{key}: got {size}, but {cfg.model.name} has patch size {side}: crop sides "
                                  f"must be multiples of it, e.g. {low} or {low + side}")

    def _pairs(self) -> list[tuple[str, nn.Module, nn.Module]]:
        """(name, student part, teacher part) of every EMA'd part: backbone, relation block, heads."""
        s, t = self.student, self.teacher
        parts = [("backbone", s.backbone, t.backbone), ("relation", s.relation, t.relation),
                 ("instance_head", s.instance_head, t.instance_head),
                 ("local_group_head", s.local_group_head, t.local_group_head),
                 ("group_head", s.group_head, t.group_head)]
        return [(n, a, b) for n, a, b in parts if a is not None and b is not None]

    def _teacher_student_params(self) -> tuple[list[Tensor], list[Tensor]]:
        """Matched by name; the student's predictors have no teacher counterpart and are skipped (pitfall 8)."""
        teacher: list[Tensor] = []
        student: list[Tensor] = []
        for _, s_part, t_part in self._pairs():
            t_params = dict(t_part.named_parameters())
            for name, p in s_part.named_parameters():
                if name in t_params:
                    student.append(p)
                    teacher.append(t_params[name])
        return teacher, student

    @torch.no_grad()
    def _copy_student_to_teacher(self) -> None:
        teacher, student = self._teacher_student_params()
        for t, s in zip(teacher, student):
            t.copy_(s)

    # ---- data --------------------------------------------------------------------------------------------------------
    @classmethod
    def build_datasets(cls, cfg: RunConfig) -> dict[str, Dataset]:
        """``train``: multi-crop items; ``knn_train`` / ``knn_test`` (also ``test``) and ``probe_train`` /
        ``probe_test``: plain images for evaluation."""
        from vitlab.data import TrainTransform, build_dataset

        mcfg = cls.method_config(cfg)
        if TrainTransform.is_active(cfg.data.aug) or cfg.data.aug.mixup > 0 or cfg.data.aug.cutmix > 0:
            raise ConfigError("data.aug: Mugs builds its own multi-crop augmentation from method.crops; leave data.aug "
                              "at its defaults")
        base = build_dataset(cfg.data, "train", train=False)
        global_size, local_size = crop_sizes(cfg)
        c = mcfg.crops
        out: dict[str, Dataset] = {}
        if c.backend == "batch":  # plain images; the crops are made on the batch in the step (``Mugs.make_crops``)
            out["train"] = ByteImageDataset(base, cfg.data.channels)
        else:
            transform = MultiCropTransform(global_size, local_size, c.local_number, c.global_scale, c.local_scale,
                                           c.strong_prob, c.hflip, cfg.data.channels, base.mean,  # type: ignore
                                           base.std, c.rand_augment, c.random_erasing)  # type: ignore[attr-defined]
            out["train"] = MultiCropDataset(base, transform, cfg.data.channels)
        out.update(cls.eval_datasets(cfg))
        out["test"] = out["knn_test"]
        return out

    @staticmethod
    def eval_datasets(cfg: RunConfig) -> dict[str, Dataset]:
        from vitlab.data import build_dataset

        ecfg = Mugs.method_config(cfg).eval
        knn = _eval_data(cfg, ecfg.knn_data)
        out = {"knn_train": build_dataset(knn, "train", train=False),
               "knn_test": build_dataset(knn, "test", train=False)}
        if ecfg.probe:
            probe = _eval_data(cfg, ecfg.probe_data)
            out["probe_train"] = build_dataset(probe, "train", train=False)
            out["probe_test"] = build_dataset(probe, "test", train=False)
        return out

    # ---- schedules and optimiser -------------------------------------------------------------------------------------
    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """``teacher_momentum``: cosine 0.996 → 1 over all steps; ``teacher_temp``: per epoch, linspace from the
        warm-up value to τ_t over the warm-up epochs (endpoints included), then constant (§2.5)."""
        epochs = max(1, total_steps // max(steps_per_epoch, 1))
        momentum = cosine_schedule(self.mcfg.momentum_teacher, 1.0, epochs, steps_per_epoch)
        return {"teacher_momentum": momentum, "teacher_temp": teacher_temp_schedule(self.mcfg.gds, epochs,
                                                                                  steps_per_epoch)}

    def param_groups(self) -> list[dict[str, Any]]:
        """Decay every ≥2-D weight (pos_embed and cls_token included, pitfall 7), none on biases / 1-D parameters;
        the patch embedding at ``patch_embed_lr_scale`` × lr."""
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {(decay, patch): [] for decay in (True, False)
                                                                for patch in (False, True)}
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            decay = not (name.endswith(".bias") or p.ndim <= 1)
            groups[(decay, "patch_embed" in name)].append(p)
        wd = self.cfg.optim.weight_decay
        out = []
        for (decay, patch_embed), params in groups.items():
            if params:
                out.append({"params": params, "weight_decay": wd if decay else 0.0, "apply_wd": decay,
                            "lr_scale": self.mcfg.patch_embed_lr_scale if patch_embed else 1.0})
        return out

    def configure_optimizers(self, build_optimizer: OptimizerBuilder) -> dict[str, torch.optim.Optimizer]:
        """AdamW over the student (the engine's ``optim`` section)."""
        return {"main": build_optimizer(self.param_groups())}

    def trainable_model(self) -> nn.Module:
        return self.student

    def compiled_modules(self) -> list[nn.Module]:
        """``train.compile``: the student and the momentum teacher, as both run on every step."""
        return [self.student, self.teacher]

    def train(self, mode: bool = True) -> Mugs:
        super().train(mode)
        self.teacher.eval()  # the teacher never drops paths (it is built without drop path in the official code)
        return self

    # ---- one step ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def make_crops(self, images: Tensor, progress: Progress) -> dict[str, Tensor]:
        """``method.crops.backend: batch``: the multi-crop of a batch of plain images (B, C, H, W) (uint8 or [0, 1])
        on their device, drawn from a generator seeded by (train.seed, rank, step, batch of the step), so a resumed
        run crops alike; the last counts the batches of one step (several under ``optim.accum_steps``)."""
        if self.batch_crops is None:
            raise ValueError("Mugs: the batch holds plain images but method.crops.backend is 'pil' (the loader's "
                             "items should already be crops)")
        step, calls = self._crop_calls
        self._crop_calls = (progress.step, calls + 1 if step == progress.step else 0)
        seed = int(np.random.SeedSequence([self.cfg.train.seed, rank(), progress.step,
                                           self._crop_calls[1]]).generate_state(1)[0])
        generator = torch.Generator(device=images.device).manual_seed(seed)
        return self.batch_crops(images, generator)

    def forward(self, batch: Mapping[str, Any], progress: Progress) -> dict[str, Tensor]:
        """The three losses of one batch (steps 1-4 of the module docstring); buffers are updated here. The batch
        holds the crops (``teacher_globals``, ..., ``weak_flag``) or, with the batch backend, plain ``image``s."""
        mcfg = self.mcfg
        if "teacher_globals" not in batch:
            batch = {**batch, **self.make_crops(batch["image"], progress)}
        teacher_crops = list(batch["teacher_globals"].unbind(1))
        student_crops = list(batch["student_globals"].unbind(1))
        if "student_locals" in batch:
            student_crops += list(batch["student_locals"].unbind(1))
        num_student, num_global = len(student_crops), 2
        with torch.no_grad():
            teacher = self.teacher(teacher_crops, self.teacher_memory)
        student = self.student(student_crops, self.student_memory)

        terms: dict[str, Tensor] = {}
        w_ids, w_lgds, w_gds = mcfg.loss_weights
        if self.instance_loss is not None:
            terms["ids"] = self.instance_loss(student.instance, teacher.instance, num_student, 2, num_global)
        if self.local_group_loss is not None:
            terms["lgds"] = self.local_group_loss(student.local_group, teacher.local_group, num_student, 2,
                                                  num_global)
        if self.group_loss is not None:
            terms["gds"] = self.group_loss(student.group, teacher.group, progress["teacher_temp"], num_student, 2,
                                           num_global)
        weights = {"ids": w_ids, "lgds": w_lgds, "gds": w_gds}
        loss = sum(weights[k] * v for k, v in terms.items()) / sum(weights[k] for k in terms)

        # Memory writes: the teacher's first global crop for every image, the student's only when weakly augmented.
        if self.teacher_memory is not None and self.student_memory is not None:
            assert teacher.first_patch_mean is not None and student.first_patch_mean is not None
            self.teacher_memory.write(teacher.first_patch_mean)
            self.student_memory.write(student.first_patch_mean, batch["weak_flag"].bool())
        out = {k: v.detach() for k, v in terms.items()}
        out["loss"] = loss  # type: ignore[assignment]
        return out

    def training_step(self, batch: dict[str, Tensor], progress: Progress, helper: StepHelper) -> dict[str, Tensor]:
        optimizer = helper.optimizers["main"]
        helper.set_lr(optimizer, progress["lr"], progress["weight_decay"])
        out = self(batch, progress)
        helper.backward(out["loss"])
        if self.mcfg.clip_grad_per_param is not None:
            helper.unscale_gradients(optimizer)  # clip the true gradients, not loss-scaled ones (16-mixed)
            clip_gradients_per_parameter(self.student.parameters(), self.mcfg.clip_grad_per_param)
        if progress.epoch < self.mcfg.gds.freeze_last_layer and self.student.group_head is not None:
            for p in self.student.group_head.last_layer.parameters():
                p.grad = None
        helper.step(optimizer)
        return out

    @torch.no_grad()
    def on_optimizer_step(self, progress: Progress) -> None:
        """Teacher EMA (§2.1): t ← m·t + (1 − m)·s with the scheduled momentum m."""
        teacher, student = self._teacher_student_params()
        ema_update_(teacher, student, progress["teacher_momentum"])
        copy_buffers_(self.teacher.backbone, self.student.backbone)  # BN statistics, if any, are the student's

    # ---- evaluation --------------------------------------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        """The teacher backbone (no relation block, no heads): [CLS] after the final norm."""
        return self.teacher.backbone

    def evaluate(self, loaders: Mapping[str, Any], fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        """k-NN top-1 for every ``eval.knn_k`` (``knn_top1`` is k = 20 when asked, else the first k) and the linear
        probe top-1, on the teacher backbone. Loaders the engine did not give are built from the run's config."""
        backbone = model if model is not None else self.eval_model()
        ecfg = self.mcfg.eval
        device = fabric.device if fabric is not None else next(backbone.parameters()).device
        needed = ["knn_train", "knn_test"] + (["probe_train", "probe_test"] if ecfg.probe else [])
        missing = [k for k in needed if k not in loaders]
        built: dict[str, Any] = {}
        if missing:
            datasets = self.eval_datasets(self.cfg)
            if "test" in loaders and ecfg.knn_data is None:
                built["knn_test"] = loaders["test"]
            for key in missing:
                built.setdefault(key, build_loader(datasets[key], self.cfg.data.num_workers,
                                                   batch_size=self.cfg.data.eval_batch_size, device=device))
        source = {**built, **{k: v for k, v in loaders.items() if k in needed}}
        was_training = backbone.training
        backbone.eval()
        metrics = evaluate_frozen_features(backbone, source, ecfg, self.cfg.train.seed, device)
        backbone.train(was_training)
        return metrics


def teacher_temp_schedule(gds: GroupConfig, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """Per-step teacher temperature: per epoch np.linspace(warm-up, τ_t, warm-up epochs), then τ_t (§2.5)."""
    warm = min(gds.warmup_teacher_temp_epochs, epochs)
    per_epoch = np.concatenate([np.linspace(gds.warmup_teacher_temp, gds.teacher_temp, gds.warmup_teacher_temp_epochs)
                                [:warm], np.full(epochs - warm, gds.teacher_temp)])
    return np.repeat(per_epoch, steps_per_epoch)


@torch.no_grad()
def clip_gradients_per_parameter(parameters: Any, max_norm: float) -> None:
    """DINO's ``clip_gradients`` (pitfall 6): every parameter's gradient is scaled to norm ≤ ``max_norm`` on its
    own, g ← g · max_norm / (‖g‖ + 1e-6) when that factor is < 1; not a global-norm clip."""
    for p in parameters:
        if p.grad is None:
            continue
        coef = max_norm / (float(p.grad.norm(2)) + 1e-6)
        if coef < 1:
            p.grad.mul_(coef)


# ---- demo ------------------------------------------------------------------------------------------------------------
# The CPU-budget variant of the small-scale plan (docs/mugs.md): 16-px digits, 2 local crops, 5 epochs.
