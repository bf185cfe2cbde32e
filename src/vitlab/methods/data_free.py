"""The machinery ZeroQ, GDFQ and ClusterQ share (vitlab spec clusterq §2.1, §2.4): their one configuration schema,
the frozen full-precision teacher, and :class:`DataFreeQuantMethod` (teacher, fake-quantised student, the labels-only
training set, evaluation). The methods are in :mod:`vitlab.methods.gdfq`, :mod:`vitlab.methods.clusterq` and
:mod:`vitlab.methods.zeroq`.

One schema serves the three methods, so that one recipe runs ``vitlab quantize --method clusterq|gdfq|zeroq`` (the
ImageNet recipes rely on it); each method reads the fields it needs.

No real training image is used: the engine's training set is :class:`~vitlab.quant.data.SyntheticLabels` (labels
only). The test split of ``data`` is read for evaluation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vitlab.config import ConfigError, MethodConfig, RunConfig, require
from vitlab.methods.base import DataInfo, Method
from vitlab.models.classifier import ImageClassifier, build_classifier
from vitlab.quant.data import SyntheticLabels
from vitlab.quant.losses import bn_layers
from vitlab.quant.quantizer import (
    MAX_BITS,
    MIN_BITS,
    QuantizationError,
    quantize_model,
    set_act_calibration,
)

__all__ = ["DataFreeQuantConfig", "DataFreeQuantMethod", "load_teacher", "teacher_data_info"]


@dataclass
class DataFreeQuantConfig(MethodConfig):
    """Hyper-parameters of ZeroQ, GDFQ and ClusterQ (one schema, so one recipe serves ``--method`` of each).

    Defaults are the official ImageNet settings (spec §3); ``None`` means "the method's own default" where the methods
    differ (``kd_reduction``: GDFQ mean, ClusterQ batchmean; ``augment_prob``: GDFQ 0, ClusterQ 0.5).
    """

    name: str = "gdfq"
    teacher_ckpt: str | None = None  # the FP teacher: a vitlab checkpoint, or a bare state dict for model.name
    wbits: int = 4  # weight bits (per output channel), 2..8
    abits: int = 4  # activation bits (per tensor, after ReLU/ReLU6), 2..8
    skip: list[str] = field(default_factory=list)  # module-name patterns kept full precision (default: none)
    act_after: list[str] = field(default_factory=lambda: ["relu", "relu6"])  # gelu / silu are an extension
    # bare state-dict teachers only (a vitlab checkpoint carries these in its data_info):
    num_classes: int | None = None
    input_mean: list[float] | None = None  # statistics mapping the generator's normalised images to [0, 1] inputs
    input_std: list[float] | None = None
    # generator and loop (GDFQ)
    iters_per_epoch: int = 200
    warmup_epochs: int = 50  # generator-only epochs; the student is stepped from this epoch on
    calib_epochs: int = 4  # activation ranges move in epochs 0 .. calib_epochs-1, then freeze
    generator: Literal["auto", "cifar", "imagenet"] = "auto"  # auto (imagenet for >= 64 px) | cifar | imagenet
    latent_dim: int = 100
    generator_bn_eps: float = 0.8  # the reference's BatchNorm2d(C, 0.8): eps, kept for fidelity
    generator_lr: float = 1e-3  # Adam; multiplied by optim.step_gamma at optim.step_milestones like the student
    generator_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    bns_weight: float = 0.1
    kd_temperature: float = 20.0
    kd_alpha: float = 1.0
    kd_reduction: Literal["mean", "batchmean"] | None = None  # GDFQ: mean, ClusterQ: batchmean; None = method default
    augment_prob: float | None = None  # ClusterQ only: per-batch RandomResizedCrop + flip probability; None = 0.5
    augment_hflip: bool = True  # ClusterQ only
    # ClusterQ (spec §2.2, §2.3)
    soft_stat_epoch: int = 50  # centroids initialised at the start of this epoch; alignment in later epochs
    centroid_samples: int = 1  # generated samples per class per centroid update (released soft_stat_batchsize)
    centroid_decay: float = 0.2  # EMA weight of the new statistics
    cbns_weight: float = 0.9
    diversity_weight: float = 0.1
    mean_jitter: float = 0.03
    var_jitter: float = 0.05
    # generated (intent) | running_buffers (released)
    centroid_source: Literal["generated", "running_buffers"] = "generated"
    diversity: Literal["jitter", "constant"] = "jitter"  # jitter (intent) | constant (released, no gradient)
    cbns_reduction: Literal["per_class", "released"] = "per_class"  # per_class (intent) | released
    align_start: int | None = None  # first aligned BN index; None = floor((n_BN + 1) / 2) - 2
    # ZeroQ (spec §2.5)
    distill_images: int = 32
    distill_steps: int = 500
    distill_lr: float = 0.5
    distill_min_lr: float = 1e-4
    distill_patience: int = 100

    def validate(self) -> None:
        for key in ("wbits", "abits"):
            value = getattr(self, key)
            require(not isinstance(value, bool) and MIN_BITS <= value <= MAX_BITS, f"method.{key}",
                    f"an integer bit width from {MIN_BITS} to {MAX_BITS}", value)
        require(all(a in ("relu", "relu6", "gelu", "silu") for a in self.act_after), "method.act_after",
                "activations among relu, relu6, gelu, silu", self.act_after)
        require(self.augment_prob is None or 0.0 <= self.augment_prob <= 1.0, "method.augment_prob",
                "null or a probability in [0, 1]", self.augment_prob)
        for key in ("iters_per_epoch", "latent_dim", "centroid_samples", "distill_images", "distill_steps"):
            require(getattr(self, key) >= 1, f"method.{key}", "an integer >= 1", getattr(self, key))
        require(0.0 < self.centroid_decay <= 1.0, "method.centroid_decay", "a value in (0, 1]", self.centroid_decay)
        if (self.input_mean is None) != (self.input_std is None):  # a dependency between keys
            raise ConfigError("method.input_mean / method.input_std: give both or neither")


# ---- the teacher ----------------------------------------------------------------------------------------------------
def _is_vitlab_checkpoint(path: str) -> bool:
    from vitlab.engine.checkpoint import CKPT_FORMAT

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(obj, dict) and obj.get("format") == CKPT_FORMAT


def _require_teacher_path(cfg: RunConfig) -> str:
    from pathlib import Path

    path = getattr(cfg.method, "teacher_ckpt", None)
    if not path:
        raise ConfigError("method.teacher_ckpt: a full-precision teacher is required (vitlab quantize --ckpt PATH)")
    if not Path(path).is_file():
        from vitlab.engine.checkpoint import CheckpointError

        raise CheckpointError(f"method.teacher_ckpt {path}: file not found (the FP checkpoint to quantise)")
    return str(path)


def teacher_data_info(cfg: RunConfig) -> DataInfo:
    """Number of classes, input statistics and class names of the teacher, without reading any data set."""
    mcfg = DataFreeQuantMethod.method_config(cfg)
    path = _require_teacher_path(cfg)
    if _is_vitlab_checkpoint(path):
        from vitlab.engine.checkpoint import load_checkpoint

        info = DataInfo(**load_checkpoint(path)["data_info"])
        if mcfg.input_mean is not None and mcfg.input_std is not None:
            info.mean, info.std = tuple(mcfg.input_mean), tuple(mcfg.input_std)
        return info
    if mcfg.num_classes is None or mcfg.input_mean is None or mcfg.input_std is None:
        raise ConfigError(f"method.teacher_ckpt {path}: a bare state dict needs method.num_classes, "
                          "method.input_mean and method.input_std (and model.name for its architecture)")
    return DataInfo(num_classes=mcfg.num_classes, channels=cfg.data.channels, img_size=cfg.data.img_size,
                    mean=tuple(mcfg.input_mean), std=tuple(mcfg.input_std))


def load_teacher(cfg: RunConfig, info: DataInfo) -> ImageClassifier:
    """The frozen FP teacher (eval mode): a vitlab checkpoint's eval model, or ``model.name`` + a bare state dict."""
    path = _require_teacher_path(cfg)
    if _is_vitlab_checkpoint(path):
        from vitlab.engine.checkpoint import load_eval_model

        teacher = load_eval_model(path)
        if not isinstance(teacher, ImageClassifier):
            raise QuantizationError(f"method.teacher_ckpt {path}: its model is a {type(teacher).__name__}, not an "
                                    "image classifier")
    else:
        from vitlab.models.cifar_resnet import load_state_dict_file

        teacher = build_classifier(cfg.model, info.num_classes, info.channels, info.img_size, info.mean, info.std)
        load_state_dict_file(teacher.model, path)
    if not bn_layers(teacher):
        raise QuantizationError(
            f"method.teacher_ckpt {path}: the teacher ({type(teacher.model).__name__}) has no BatchNorm2d layer. "
            "ZeroQ, GDFQ and ClusterQ synthesise data by matching the teacher's BatchNorm statistics, so they need a "
            "BN network (ResNet, MobileNet); plain ViTs have none")
    return teacher.requires_grad_(False).eval()


# ---- the shared method ----------------------------------------------------------------------------------------------
class DataFreeQuantMethod(Method[DataFreeQuantConfig]):
    """Teacher, fake-quantised student and the data-free training set; subclasses add how images are synthesised."""

    automatic_optimization = False
    act_range_mode = "ema"
    input_mean: Tensor
    input_std: Tensor

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        mcfg = self.mcfg
        self.teacher = load_teacher(cfg, data)
        self.student = copy.deepcopy(self.teacher)
        self.student.model = quantize_model(self.teacher.model, mcfg.wbits, mcfg.abits, mcfg.skip, mcfg.act_after,
                                            act_mode=self.act_range_mode)
        self.student.requires_grad_(True)
        self.register_buffer("input_mean", torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("input_std", torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    @classmethod
    def build_datasets(cls, cfg: RunConfig) -> dict[str, Dataset]:
        """Labels only for training (no real image); the real test split for evaluation."""
        from vitlab.data import build_dataset

        info = teacher_data_info(cfg)
        length = cls.steps_per_epoch(cls.method_config(cfg)) * cfg.data.batch_size
        return {"train": SyntheticLabels(info.num_classes, length, info.mean, info.std, info.classes),
                "test": build_dataset(cfg.data, "test", train=False)}

    @staticmethod
    def steps_per_epoch(mcfg: DataFreeQuantConfig) -> int:
        return mcfg.iters_per_epoch

    def to_pixels(self, normalised: Tensor) -> Tensor:
        """Generator output (normalised input space) -> the [0, 1]-space input every vitlab classifier takes."""
        return normalised * self.input_std.to(normalised) + self.input_mean.to(normalised)

    def train(self, mode: bool = True) -> DataFreeQuantMethod:
        super().train(mode)
        # teacher and student stay in eval mode: BN keeps (and uses) the FP running statistics (spec §7.5)
        self.teacher.eval()
        self.student.eval()
        if not mode:
            set_act_calibration(self.student, False)
        return self

    def eval_model(self) -> nn.Module:
        return self.student

    def evaluate(self, loaders: Mapping[str, Any], fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        """Simulated-quantised top-1/top-5 of the student and the FP teacher's top-1 (``fp_top1``) on ``test``."""
        from vitlab.evaluation.classification import evaluate_classifier

        set_act_calibration(self.student, False)
        metrics = evaluate_classifier(model if model is not None else self.student, loaders["test"], fabric,
                                      self.data.num_classes)
        metrics["fp_top1"] = evaluate_classifier(self.teacher, loaders["test"], fabric, self.data.num_classes)["top1"]
        return metrics
