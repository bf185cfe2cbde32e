"""A real int8 model as a vitlab method, so that ``vitlab eval --ckpt model_int8.ckpt`` (through ``load_method``)
runs a ``vitlab export --format int8`` artifact like any checkpoint (vitlab spec clusterq §2.6).

The checkpoint stores the converted network's state dict (packed int8 weights, scales and zero points: plain tensors,
``weights_only``-loadable); :class:`Int8Model` rebuilds the same FX graph from ``model`` and ``data_info`` and loads it.
It cannot be trained (``vitlab train`` refuses it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vitlab.config import ConfigError, RunConfig
from vitlab.methods.base import DataInfo, Method, Progress, register_method
from vitlab.methods.schemas.int8 import INT8_ENGINES, Int8Config, Int8Engine  # noqa: F401  (re-exported)
from vitlab.models.classifier import ImageClassifier, create_backbone
from vitlab.quant.int8 import convert_int8

__all__ = ["Int8Config", "Int8Model"]


@register_method("int8")
class Int8Model(Method[Int8Config]):
    """Float input normalisation in front of a converted int8 backbone; CPU only."""

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        mcfg = self.mcfg
        # The structure only: observers see one random batch, then load_state_dict brings the real int8 parameters.
        backbone = create_backbone(cfg.model, data.num_classes, data.channels, data.img_size).eval()
        example = torch.randn(2, data.channels, data.img_size, data.img_size)
        quantized = convert_int8(backbone, example, mcfg.engine)
        self.model = ImageClassifier(quantized, data.mean, data.std) if cfg.model.normalize else \
            ImageClassifier(quantized)

    @classmethod
    def build_datasets(cls, cfg: RunConfig) -> dict[str, Any]:
        """Only the evaluation split: an int8 model is evaluated (``vitlab eval --ckpt``), never trained."""
        from vitlab.data import build_dataset

        return {"test": build_dataset(cfg.data, "test", train=False)}

    def forward(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        raise ConfigError("method.name: int8 models are not trainable")

    def eval_model(self) -> nn.Module:
        return self.model

    def evaluate(self, loaders: Any, fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        """Top-1/top-5 on ``test``, on the CPU (int8 kernels are CPU kernels; the model has no float parameters to
        take a device from)."""
        from types import SimpleNamespace

        from vitlab.evaluation.classification import evaluate_classifier

        cpu = SimpleNamespace(device=torch.device("cpu"), world_size=1)
        return evaluate_classifier(model if model is not None else self.model, loaders["test"], cpu,
                                   self.data.num_classes)
