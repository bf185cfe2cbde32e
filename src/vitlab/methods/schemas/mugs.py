"""The ``method`` section of Mugs (:mod:`vitlab.methods.mugs`): its schema, without torch, so that a recipe's mistake
is reported before the method loads (docs/engine.md, "Methods and their schemas")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from vitlab.config import MethodConfig, require

LGDSQuery = Literal["prenorm_all_tokens", "postnorm_patch_mean"]
LGDS_QUERIES: tuple[str, ...] = get_args(LGDSQuery)
CropBackend = Literal["batch", "pil"]
CROP_BACKENDS: tuple[str, ...] = get_args(CropBackend)


# ---- configuration ---------------------------------------------------------------------------------------------------
@dataclass
class CropConfig:
    """Multi-crop augmentation (§2.2). ImageNet: 2 x 224 (scale 0.25-1) + 10 x 96 (scale 0.05-0.25)."""

    global_size: int | None = None  # side of the global crops; None = data.img_size
    local_size: int = 96
    local_number: int = 10
    global_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.25])
    strong_prob: float = 0.5  # probability of the strong (DeiT) pipeline for the student's crops
    hflip: float = 0.5  # 0 for digits and glyphs: a flip changes the class
    rand_augment: str = "rand-m9-mstd0.5-inc1"
    random_erasing: float = 0.25
    # batch: the loader gives plain uint8 images and the step crops the whole batch on the training device
    # (data/batch_aug.py); pil: every item is cropped by PIL in the loader (data/multicrop.py), as the official code
    backend: CropBackend = "batch"


@dataclass
class InstanceConfig:
    """IDS (§2.3): InfoNCE against a queue of teacher keys."""

    queue_size: int = 65536  # must be a multiple of the global batch
    temperature: float = 0.2


@dataclass
class LocalGroupConfig:
    """LGDS (§2.4): memories of patch-token means, top-k neighbours, relation block, InfoNCE against a queue."""

    queue_size: int = 65536  # InfoNCE negatives; a multiple of the global batch
    memory_size: int = 65536  # neighbour memory; a multiple of the global batch (the teacher writes it every step)
    top_k: int = 8
    temperature: float = 0.2
    query: LGDSQuery = "prenorm_all_tokens"  # prenorm_all_tokens (official code) | postnorm_patch_mean (pitfall 4)
    reproduce_pointer_skip: bool = False  # true: the official memory pointer that skips slots (pitfall 2)


@dataclass
class GroupConfig:
    """GDS (§2.5): DINO prototypes with centring and sharpening."""

    prototypes: int = 65536
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # after the warm-up
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    center_momentum: float = 0.9
    norm_last_layer: bool = False  # true freezes weight_g (ViT-L); false trains it (ViT-S/B)
    freeze_last_layer: int = 1  # epochs without gradient for the prototypes (1 ViT-S, 3 ViT-B/L)


@dataclass
class MugsEvalConfig:
    """k-NN (§3.1) and linear probe (§3.2) on the teacher backbone."""

    knn_k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    knn_temperature: float = 0.05  # 0.05 ViT-S, 0.04 ViT-B/L (the script's default is 0.07)
    knn_data: str | None = None  # data set whose train split is the k-NN memory and test split the queries
    probe: bool = True
    probe_data: str | None = None  # data set of the linear probe (train -> test); None = data.name
    probe_epochs: int = 100
    probe_lr: float = 0.015  # per 256 images
    probe_batch_size: int = 1024
    probe_last_blocks: int = 4  # concatenated [CLS] of the last blocks (4 for ViT-S)
    probe_avgpool: bool = False  # also the mean patch token of the last block (ViT-B)
    probe_standardize: bool = False  # z-score the features first (not in the official protocol; the small recipes do)


@dataclass
class MugsConfig(MethodConfig):
    name: str = "mugs"
    # (IDS, LGDS, GDS): total = sum(w_i L_i) / sum(w_i) over w_i > 0; the official code only switches on/off (pitfall 1)
    loss_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    head_hidden_dim: int = 2048  # projector hidden width of the three heads
    head_out_dim: int = 256  # IDS / LGDS output width (also the GDS bottleneck default)
    predictor_hidden_dim: int = 4096  # student-only predictor of the IDS / LGDS heads
    momentum_teacher: float = 0.996  # cosine to 1 over all steps
    clip_grad_per_param: float | None = 3.0  # each parameter's gradient norm is clipped (not the global norm)
    patch_embed_lr_scale: float = 0.2
    crops: CropConfig = field(default_factory=CropConfig)
    ids: InstanceConfig = field(default_factory=InstanceConfig)
    lgds: LocalGroupConfig = field(default_factory=LocalGroupConfig)
    gds: GroupConfig = field(default_factory=GroupConfig)
    eval: MugsEvalConfig = field(default_factory=MugsEvalConfig)

    def validate(self) -> None:
        w = self.loss_weights
        require(len(w) == 3 and min(w) >= 0 and sum(w) > 0, "method.loss_weights",
                "three weights >= 0 (IDS, LGDS, GDS), not all 0", w)
        require(0.0 <= self.momentum_teacher <= 1.0, "method.momentum_teacher", "a value in [0, 1]",
                self.momentum_teacher)
        require(self.clip_grad_per_param is None or self.clip_grad_per_param > 0, "method.clip_grad_per_param",
                "null or a norm > 0", self.clip_grad_per_param)
        for key, value in (("ids.temperature", self.ids.temperature), ("lgds.temperature", self.lgds.temperature),
                           ("gds.student_temp", self.gds.student_temp), ("gds.teacher_temp", self.gds.teacher_temp),
                           ("gds.warmup_teacher_temp", self.gds.warmup_teacher_temp),
                           ("eval.knn_temperature", self.eval.knn_temperature)):
            require(value > 0, f"method.{key}", "a temperature > 0", value)
        for key, value in (("ids.queue_size", self.ids.queue_size), ("lgds.queue_size", self.lgds.queue_size),
                           ("lgds.memory_size", self.lgds.memory_size), ("gds.prototypes", self.gds.prototypes),
                           ("crops.local_size", self.crops.local_size), ("head_out_dim", self.head_out_dim)):
            require(value >= 1, f"method.{key}", "an integer >= 1", value)
        require(1 <= self.lgds.top_k <= self.lgds.memory_size, "method.lgds.top_k",
                f"1..lgds.memory_size ({self.lgds.memory_size})", self.lgds.top_k)
        require(self.crops.local_number >= 0, "method.crops.local_number", "an integer >= 0", self.crops.local_number)
        require(0.0 <= self.crops.strong_prob <= 1.0, "method.crops.strong_prob", "a probability in [0, 1]",
                self.crops.strong_prob)
        require(0.0 <= self.crops.hflip <= 1.0, "method.crops.hflip", "a probability in [0, 1]", self.crops.hflip)
        require(self.crops.backend in CROP_BACKENDS, "method.crops.backend", " or ".join(map(repr, CROP_BACKENDS)),
                self.crops.backend)
        require(bool(self.eval.knn_k) and min(self.eval.knn_k) >= 1, "method.eval.knn_k",
                "a non-empty list of integers >= 1", self.eval.knn_k)
