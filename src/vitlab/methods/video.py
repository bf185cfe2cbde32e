"""Supervised video classification with multi-view testing (DualFormer, specs/dualformer.md §3).

Training is :class:`~vitlab.methods.supervised.Supervised` on ``{"video": (B, 3, T, H, W), "label"}`` batches.
Evaluation follows the official protocol: each test video is seen as ``data.video.num_clips`` temporal clips ×
``data.video.num_crops`` spatial crops, the views' softmax probabilities are averaged (``average_clips='prob'``),
and the cost is reported as FLOPs per view × views. Video models whose kernels are fixed by the clip size
(DualFormer's ``video_size``) are built for (``data.video.clip_len``, ``data.img_size``, ``data.img_size``).

Parameter groups (spec §3.2, pitfall 3): ``param_grouping: default`` is the engine's (no decay on 1-D parameters and
the model's ``no_weight_decay()``); ``official`` is the K400 config's evident intent (decay everywhere except the
PEG and the norm layers); ``mmcv`` reproduces mmcv's longest-key matching of ``custom_keys`` (the PEG gets the full
learning rate and no decay, the backbone norms get decay). ``backbone_lr_scale`` multiplies the backbone's learning
rate (official K400 fine-tuning from a 2-D checkpoint: 0.1); the classifier keeps the full rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from vitlab.config import ConfigError, RunConfig
from vitlab.methods.base import DataInfo, register_method
from vitlab.methods.schemas.video import (  # noqa: F401  (re-exported: the schema lives in a torch-free module)
    PARAM_GROUPINGS,
    ParamGrouping,
    VideoSupervisedConfig,
)
from vitlab.methods.supervised import Supervised

PEG_KEY = "pos_embed"  # vitlab's name of DualFormer's PEG (official ``pos_block``)


def _is_video_model(name: str) -> bool:
    """A registered model whose default input is a clip (C, T, H, W)."""
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg is not None and cfg.input_size is not None and len(cfg.input_size) == 4


@register_method("video_supervised")
class VideoSupervised(Supervised):
    """Supervised training on clips; multi-view evaluation with top-1/top-5, views and FLOPs per video."""

    config_class = VideoSupervisedConfig
    mcfg: VideoSupervisedConfig  # narrows Supervised's SupervisedConfig (config_class above)

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        video_size = [cfg.data.video.clip_len, data.img_size, data.img_size]
        if _is_video_model(cfg.model.name):
            given = cfg.model.kwargs.get("video_size")
            if given is not None and [int(v) for v in given] != video_size:
                raise ConfigError(f"model.kwargs.video_size: got {list(given)}, but the clips are {video_size} "
                                  "(data.video.clip_len, data.img_size, data.img_size); drop the key or match them")
            cfg.model.kwargs = {**cfg.model.kwargs, "video_size": video_size}
        super().__init__(cfg, data)
        self.video_size = tuple(video_size)
        self._flops_per_view: int | None = None
        if self.mcfg.init_2d_ckpt:
            self._inflate(Path(self.mcfg.init_2d_ckpt))

    def _inflate(self, path: Path) -> None:
        from vitlab.models.dualformer import DualFormer, inflate_2d_checkpoint

        backbone = self.model.model
        if not isinstance(backbone, DualFormer):
            raise ConfigError(f"method.init_2d_ckpt: inflation needs a DualFormer model, not {self.cfg.model.name}")
        if not path.is_file():
            raise ConfigError(f"method.init_2d_ckpt: file {path} not found (a 2-D DualFormer state dict)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        backbone.load_state_dict(inflate_2d_checkpoint(state, backbone), strict=True)

    # ---- optimisation -----------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Groups by (learning-rate scale, decay); see the module docstring for the three groupings."""
        grouping, scale = self.mcfg.param_grouping, self.mcfg.backbone_lr_scale
        if grouping == "default" and scale == 1.0:
            return super().param_groups()
        model = self.trainable_model()
        backbone: Any = getattr(model, "model", model)
        classifier = backbone.get_classifier() if hasattr(backbone, "get_classifier") else None
        head_ids = {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
        norm_ids = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm))
                    for p in m.parameters(recurse=False)}
        if grouping == "default":
            default_decay = {id(p) for g in super().param_groups() if g["apply_wd"] for p in g["params"]}
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            is_head, is_peg = id(p) in head_ids, f".{PEG_KEY}." in f".{name}"
            lr_scale = 1.0 if is_head else scale
            if grouping == "default":
                decay = id(p) in default_decay
            elif grouping == "official":  # custom_keys as meant: backbone lr_mult, PEG and norms decay_mult 0
                decay = not (is_peg or id(p) in norm_ids)
            else:  # mmcv: only the longest matching key applies ('pos_block' > 'backbone' > 'norm')
                decay = not is_peg
                lr_scale = 1.0 if (is_head or is_peg) else scale
            groups.setdefault((lr_scale, decay), []).append(p)
        wd = self.cfg.optim.weight_decay
        return [{"params": params, "weight_decay": wd if decay else 0.0, "lr_scale": lr_scale, "apply_wd": decay}
                for (lr_scale, decay), params in groups.items()]

    # ---- evaluation -------------------------------------------------------------------------------------------------
    def evaluate(self, loaders: Mapping[str, Any], fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        """Multi-view top-1/top-5 (%) and loss on ``loaders["test"]``; ``views``, ``flops_per_view`` and
        ``flops_per_video`` (= per view × views; whole model, fvcore, as ``vitlab info``) when counted."""
        from vitlab.evaluation.multiview import evaluate_multiview
        from vitlab.models.profile import count_flops

        model = model if model is not None else self.eval_model()
        if self.mcfg.count_flops and self._flops_per_view is None:
            self._flops_per_view = count_flops(model, (self.data.channels, *self.video_size))
        v = self.cfg.data.video
        result = evaluate_multiview(model, loaders["test"], fabric, average=self.mcfg.average,
                                    spatial_crops=v.num_crops, max_views_per_forward=self.mcfg.max_views_per_forward,
                                    flops_per_view=self._flops_per_view, count_flops=False)
        expected = v.num_clips * v.num_crops
        if result["views"] != expected:
            raise ConfigError(f"data.video: the test batches hold {result['views']} views per video, expected "
                              f"num_clips × num_crops = {v.num_clips} × {v.num_crops} = {expected}")
        out = {"top1": result["top1"], "top5": result["top5"], "loss": result["loss"], "views": float(expected)}
        if self._flops_per_view is not None:
            out["flops_per_view"] = float(self._flops_per_view)
            out["flops_per_video"] = float(self._flops_per_view * expected)
        return out
