"""GDFQ (Xu et al., ECCV 2020, "Generative low-bitwidth data free quantization"), the base of ClusterQ, and the
machinery that ZeroQ, GDFQ and ClusterQ share (vitlab spec clusterq §2.1, §2.4).

A class-conditional generator learns images on which the frozen full-precision teacher predicts the asked class
(cross-entropy) and reproduces its BatchNorm statistics (L_BNS); the fake-quantised student is distilled from the
teacher on those images (KD with T = 20 plus cross-entropy). One generator step and one student step per iteration
(manual optimisation, two optimizers); the student is stepped only after ``warmup_epochs`` and stays in eval mode
throughout, so its BN layers keep the teacher's running statistics. Activation ranges move only in the first
``calib_epochs`` epochs.

No real training image is used: the engine's training set is :class:`~vitlab.quant.data.SyntheticLabels` (labels
only). The test split of ``data`` is read for evaluation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from vitlab.config import ConfigError, MethodConfig, RunConfig
from vitlab.engine.schedules import step_schedule
from vitlab.methods.base import DataInfo, Method, Progress, StepHelper, register_method
from vitlab.models.classifier import ImageClassifier, build_classifier
from vitlab.quant.data import SyntheticLabels
from vitlab.quant.generator import build_generator
from vitlab.quant.losses import BNStatsRecorder, bn_layers, bns_loss, kd_loss
from vitlab.quant.quantizer import (
    MAX_BITS,
    MIN_BITS,
    QuantizationError,
    quantize_model,
    set_act_calibration,
)

__all__ = ["DataFreeQuantConfig", "DataFreeQuantMethod", "GDFQ", "augment_batch", "load_teacher", "teacher_data_info"]


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
    generator: str = "auto"  # auto (imagenet for >= 64 px) | cifar | imagenet
    latent_dim: int = 100
    generator_bn_eps: float = 0.8  # the reference's BatchNorm2d(C, 0.8): eps, kept for fidelity
    generator_lr: float = 1e-3  # Adam; multiplied by optim.step_gamma at optim.step_milestones like the student
    generator_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    bns_weight: float = 0.1
    kd_temperature: float = 20.0
    kd_alpha: float = 1.0
    kd_reduction: str | None = None  # mean (GDFQ) | batchmean (ClusterQ); None = the method's own
    augment_prob: float | None = None  # ClusterQ's per-batch RandomResizedCrop + flip probability; None = own
    augment_hflip: bool = True
    # ClusterQ (spec §2.2, §2.3)
    soft_stat_epoch: int = 50  # centroids initialised at the start of this epoch; alignment in later epochs
    centroid_samples: int = 1  # generated samples per class per centroid update (released soft_stat_batchsize)
    centroid_decay: float = 0.2  # EMA weight of the new statistics
    cbns_weight: float = 0.9
    diversity_weight: float = 0.1
    mean_jitter: float = 0.03
    var_jitter: float = 0.05
    centroid_source: str = "generated"  # generated (intent) | running_buffers (released)
    diversity: str = "jitter"  # jitter (intent) | constant (released, no gradient)
    cbns_reduction: str = "per_class"  # per_class (intent) | released
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
            if isinstance(value, bool) or not MIN_BITS <= value <= MAX_BITS:
                raise ConfigError(f"method.{key}: got {value!r}, expected an integer bit width from {MIN_BITS} to "
                                  f"{MAX_BITS}")
        choices = {"generator": ("auto", "cifar", "imagenet"), "centroid_source": ("generated", "running_buffers"),
                   "diversity": ("jitter", "constant"), "cbns_reduction": ("per_class", "released"),
                   "kd_reduction": (None, "mean", "batchmean")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"method.{key}: got {getattr(self, key)!r}, expected one of "
                                  f"{', '.join(str(a) for a in allowed)}")
        unknown = [a for a in self.act_after if a not in ("relu", "relu6", "gelu", "silu")]
        if unknown:
            raise ConfigError(f"method.act_after: unknown activation(s) {unknown}, expected relu, relu6, gelu, silu")
        if self.augment_prob is not None and not 0.0 <= self.augment_prob <= 1.0:
            raise ConfigError(f"method.augment_prob: got {self.augment_prob}, expected a probability in [0, 1]")
        for key in ("iters_per_epoch", "latent_dim", "centroid_samples", "distill_images", "distill_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key}: got {getattr(self, key)}, expected an integer >= 1")
        if not 0.0 < self.centroid_decay <= 1.0:
            raise ConfigError(f"method.centroid_decay: got {self.centroid_decay}, expected a value in (0, 1]")
        if (self.input_mean is None) != (self.input_std is None):
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
    mcfg = cfg.method
    assert isinstance(mcfg, DataFreeQuantConfig)
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


# ---- ClusterQ's augmentation of generated images ---------------------------------------------------------------------
def augment_batch(images: Tensor, prob: float, hflip: bool = True, scale: tuple[float, float] = (0.8, 1.0),
                  ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """With probability ``prob`` for the whole batch, every image (B, C, H, W) gets its own RandomResizedCrop (area
    ``scale``, aspect ``ratio``, output the same size) and a random horizontal flip; differentiable (grid_sample)."""
    if prob <= 0 or float(torch.rand(())) >= prob:
        return images
    b = images.shape[0]
    area = torch.empty(b).uniform_(*scale)
    log_ratio = torch.empty(b).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])))
    width = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    height = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    centre_x = (torch.rand(b) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(b) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0) if hflip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# ---- the shared method ----------------------------------------------------------------------------------------------
class DataFreeQuantMethod(Method):
    """Teacher, fake-quantised student and the data-free training set; subclasses add how images are synthesised."""

    config_class = DataFreeQuantConfig
    automatic_optimization = False
    act_range_mode = "ema"
    input_mean: Tensor
    input_std: Tensor

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        mcfg = cfg.method
        assert isinstance(mcfg, DataFreeQuantConfig)
        self.mcfg = mcfg
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
        mcfg = cfg.method
        assert isinstance(mcfg, DataFreeQuantConfig)
        length = cls.steps_per_epoch(mcfg) * cfg.data.batch_size
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


@register_method("gdfq")
class GDFQ(DataFreeQuantMethod):
    """GDFQ: conditional generator with CE + BNS loss, KD fine-tuning of the fake-quantised student."""

    default_kd_reduction = "mean"
    default_augment_prob = 0.0

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        m = self.mcfg
        self.generator = build_generator(m.generator, data.num_classes, data.img_size, data.channels, m.latent_dim,
                                         m.generator_bn_eps)
        self.kd_reduction = m.kd_reduction or self.default_kd_reduction
        self.augment_prob = self.default_augment_prob if m.augment_prob is None else m.augment_prob

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        o, m = self.cfg.optim, self.mcfg
        if o.name == "sgd":
            student: torch.optim.Optimizer = torch.optim.SGD(self.student.parameters(), lr=o.lr, momentum=o.momentum,
                                                             nesterov=o.nesterov, weight_decay=o.weight_decay)
        else:
            student = torch.optim.AdamW(self.student.parameters(), lr=o.lr, betas=(o.betas[0], o.betas[1]),
                                        weight_decay=o.weight_decay)
        generator = torch.optim.Adam(self.generator.parameters(), lr=m.generator_lr,
                                     betas=(m.generator_betas[0], m.generator_betas[1]))
        # kept for training_step: Fabric wraps these same objects, so state and parameter groups are shared
        self._optimizers = {"student": student, "generator": generator}
        return dict(self._optimizers)

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        o, m = self.cfg.optim, self.mcfg
        epochs = max(total_steps // max(steps_per_epoch, 1), 1)
        epoch_of_step = np.arange(total_steps) // max(steps_per_epoch, 1)
        return {"generator_lr": step_schedule(m.generator_lr, epochs, steps_per_epoch, o.step_milestones,
                                              o.step_gamma)[:total_steps],
                "act_calibrate": (epoch_of_step < m.calib_epochs).astype(float),
                "student_update": (epoch_of_step >= m.warmup_epochs).astype(float)}

    def generate(self, labels: Tensor) -> Tensor:
        """Generator images (B, C, H, W) in normalised input space for ``labels`` (B,), ClusterQ's augmentation
        applied with ``augment_prob``."""
        z = torch.randn(labels.shape[0], self.mcfg.latent_dim, device=labels.device)
        return augment_batch(self.generator(z, labels), self.augment_prob, self.mcfg.augment_hflip)

    def generator_extra_loss(self, recorder: BNStatsRecorder, labels: Tensor, logits: Tensor,
                             progress: Progress) -> dict[str, Tensor]:
        """Terms added to the generator loss by subclasses (ClusterQ's alignment); GDFQ adds none."""
        return {}

    def training_step(self, batch: dict[str, Tensor], progress: Progress, helper: StepHelper) -> dict[str, Tensor]:
        m = self.mcfg
        opts: dict[str, torch.optim.Optimizer] | None = getattr(self, "_optimizers", None)
        if opts is None:
            raise RuntimeError(f"{type(self).__name__}.training_step: configure_optimizers() was not called first")
        labels = batch["label"]
        helper.set_lr(opts["generator"], progress["generator_lr"])
        helper.set_lr(opts["student"], progress["lr"], progress["weight_decay"])
        # 1. generator step: CE(teacher(G(z, y)), y) + 0.1·L_BNS (+ ClusterQ's terms)
        with BNStatsRecorder(self.teacher) as recorder:
            images = self.generate(labels)
            teacher_logits = self.teacher(self.to_pixels(images))
        ce = F.cross_entropy(teacher_logits, labels)
        bns = bns_loss(recorder.stats)
        extra = self.generator_extra_loss(recorder, labels, teacher_logits, progress)
        loss_g = ce + m.bns_weight * bns + sum(extra.values(), torch.zeros((), device=labels.device))
        helper.backward(loss_g)
        helper.step(opts["generator"])
        # 2. student step on the detached images: KD(T=20) + CE; ranges calibrate in the first epochs
        set_act_calibration(self.student, progress["act_calibrate"] > 0.5)
        pixels = self.to_pixels(images.detach())
        update = progress["student_update"] > 0.5
        with torch.set_grad_enabled(update):
            student_logits = self.student(pixels)
            loss_s = kd_loss(student_logits, teacher_logits.detach(), labels, m.kd_temperature, m.kd_alpha,
                             self.kd_reduction)
        if update:
            helper.backward(loss_s)
            helper.step(opts["student"])
        set_act_calibration(self.student, False)
        out = {"loss": loss_s.detach(), "loss_g": loss_g.detach(), "ce_g": ce.detach(), "bns": bns.detach(),
               "teacher_acc": (teacher_logits.argmax(1) == labels).float().mean(),
               "student_acc": (student_logits.argmax(1) == labels).float().mean()}
        out.update({k: v.detach() for k, v in extra.items()})
        return out
