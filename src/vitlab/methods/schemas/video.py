"""The ``method`` section of supervised video classification (:mod:`vitlab.methods.video`): its schema, without
torch, so that a recipe's mistake is reported before the method loads (docs/engine.md, "Methods and their schemas")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from vitlab.config import require
from vitlab.methods.schemas.supervised import SupervisedConfig

ParamGrouping = Literal["default", "official", "mmcv"]  # default | official (config intent) | mmcv (longest key)
PARAM_GROUPINGS: tuple[str, ...] = get_args(ParamGrouping)


@dataclass
class VideoSupervisedConfig(SupervisedConfig):
    name: str = "video_supervised"
    average: Literal["prob", "logit"] = "prob"  # how test views are combined: prob (softmax mean, official) | logit
    max_views_per_forward: int | None = None  # evaluate at most this many views per forward (memory); null = all
    count_flops: bool = True  # count FLOPs per view with fvcore (once per run) and report them with the metrics
    backbone_lr_scale: float = 1.0  # learning-rate multiplier of everything but the classifier (official K400: 0.1)
    param_grouping: ParamGrouping = "default"
    init_2d_ckpt: str | None = None  # a 2-D DualFormer checkpoint to inflate into the model (spec §2.4)

    def validate(self) -> None:
        super().validate()
        require(self.max_views_per_forward is None or self.max_views_per_forward >= 1, "method.max_views_per_forward",
                "null or >= 1", self.max_views_per_forward)
        require(self.backbone_lr_scale > 0, "method.backbone_lr_scale", "a value > 0", self.backbone_lr_scale)
