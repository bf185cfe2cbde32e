"""Fixtures of the quantisation tests: a tiny random BN teacher saved as a vitlab checkpoint (no data read)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitlab.config import load_config
from vitlab.engine.checkpoint import save_checkpoint
from vitlab.methods.base import DataInfo, build_method


def save_teacher(path: Path, model_name: str = "test_cifar_resnet", img_size: int = 16, seed: int = 0) -> Path:
    """A vitlab checkpoint of an untrained supervised ``model_name`` whose BN buffers hold non-trivial statistics."""
    torch.manual_seed(seed)
    cfg = load_config(None, [f"model.name={model_name}", f"data.img_size={img_size}", "name=teacher"])
    info = DataInfo(num_classes=10, channels=3, img_size=img_size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                    classes=[str(k) for k in range(10)])
    method = build_method(cfg, info)
    for module in method.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(path, cfg, info, method.state_dict())


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.ckpt")
