"""The machinery ZeroQ, GDFQ and ClusterQ share (vitlab spec clusterq §2.1, §2.4): their one configuration schema
(defined without torch in :mod:`vitlab.methods.schemas.data_free`), the frozen full-precision teacher, and
:class:`DataFreeQuantMethod` (teacher, fake-quantised student, the labels-only training set, evaluation). The methods
are in :mod:`vitlab.methods.gdfq`, :mod:`vitlab.methods.clusterq` and :mod:`vitlab.methods.zeroq`.

One schema serves the three methods, so that one recipe runs ``vitlab quantize --method clusterq|gdfq|zeroq`` (the
ImageNet recipes rely on it); each method reads the fields it needs.

No real training image is used: the engine's training set is :class:`~vitlab.quant.data.SyntheticLabels` (labels
only). The test split of ``data`` is read for evaluation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vitlab.config import ConfigError, RunConfig
from vitlab.methods.base import DataInfo, Method
from vitlab.methods.schemas.data_free import DataFreeQuantConfig
from vitlab.models.classifier import ImageClassifier, build_classifier
from vitlab.quant.data import SyntheticLabels
from vitlab.quant.losses import bn_layers
from vitlab.quant.quantizer import (
    QuantizationError,
    quantize_model,
    set_act_calibration,
)

__all__ = ["DataFreeQuantConfig", "DataFreeQuantMethod", "load_teacher", "teacher_data_info"]


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
