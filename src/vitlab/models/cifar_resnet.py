"""ResNets for 32×32 images (CIFAR, digits): the ResNet-18 of the AutoAttack examples, PreActResNet-18 (He et al.,
2016, "Identity mappings in deep residual networks"), a small pre-activation ResNet for the CPU plan, and DeepMind's
WideResNet with Swish (Gowal et al., 2020; Rebuffi et al., 2021), the architecture of SCORE's released models, and
the ResNet-20 of the data-free-quantisation experiments (ClusterQ, GDFQ, ZeroQ).

Every model takes inputs as given (normalisation lives in :class:`vitlab.models.ImageClassifier`) and honours timm's
contract: ``forward_features`` -> (B, C, H, W), ``forward_head(pre_logits=)``, ``reset_classifier``,
``num_features``, ``feature_info``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.errors import CheckpointError, ConfigError
from vitlab.models import register_vitlab_model

__all__ = ["CifarResNet", "PreActResNet", "DMWideResNet", "checkpoint_filter_fn"]


class _HeadMixin:
    """Global average pooling + linear classifier, shared by the families of this file."""

    num_features: int
    num_classes: int
    fc: nn.Module

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        return set()


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN + shortcut (1×1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(_HeadMixin, nn.Module):
    """The CIFAR ResNet with a 3×3 stem and no max-pool (state-dict names of the AutoAttack example model).

    Pooling is a global mean over the 4×4 final map, which equals the reference's ``avg_pool2d(out, 4)`` at 32×32.
    """

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), widths: tuple[int, ...] = (64, 128, 256, 512),
                 num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> None:
        super().__init__()
        _reject_unknown(kwargs, "CifarResNet")
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        self.feature_info: list[dict[str, Any]] = []
        for stage, (depth, width) in enumerate(zip(layers, widths)):
            stride = 1 if stage == 0 else 2
            blocks = []
            for i in range(depth):
                blocks.append(BasicBlock(in_planes, width, stride if i == 0 else 1))
                in_planes = width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": width, "reduction": 2 ** stage, "module": f"layer{stage + 1}"})
        self.num_stages = len(layers)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in range(self.num_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-conv3×3; the shortcut (1×1 conv when the shape changes) takes the activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(_HeadMixin, nn.Module):
    """Pre-activation ResNet for 32×32 inputs (the PreActResNet-18 of the Bag-of-Tricks / SCORE ``without_DDPM`` code),
    with a final BN-ReLU before pooling."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), widths: tuple[int, ...] = (64, 128, 256, 512),
                 num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> None:
        super().__init__()
        _reject_unknown(kwargs, "PreActResNet")
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        in_planes = widths[0]
        stages = []
        self.feature_info: list[dict[str, Any]] = []
        for stage, (depth, width) in enumerate(zip(layers, widths)):
            stride = 1 if stage == 0 else 2
            blocks = []
            for i in range(depth):
                blocks.append(PreActBlock(in_planes, width, stride if i == 0 else 1))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": width, "reduction": 2 ** stage, "module": f"stages.{stage}"})
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.stages(self.conv1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class HaikuBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose very first training step replaces the running statistics (momentum 1.0), then ``momentum``.

    DeepMind's Haiku-style initialisation used by the DDPM-data WideResNets (vitlab spec §3.1: BN momentum 0.01, but
    1.0 for the very first step).
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.track_running_stats and self.num_batches_tracked is not None \
                and int(self.num_batches_tracked) == 0:
            momentum = self.momentum
            self.momentum = 1.0
            try:
                return super().forward(x)
            finally:
                self.momentum = momentum
        return super().forward(x)


class DMBlock(nn.Module):
    """Pre-activation wide block with TensorFlow 'SAME' padding (asymmetric (0, 1, 0, 1) at stride 2)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, act_layer: type[nn.Module],
                 bn_momentum: float) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"DMBlock: stride {stride} must be 1 or 2")
        self.batchnorm_0 = HaikuBatchNorm2d(in_planes, momentum=bn_momentum)
        self.relu_0 = act_layer()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
        self.batchnorm_1 = HaikuBatchNorm2d(out_planes, momentum=bn_momentum)
        self.relu_1 = act_layer()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = (nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
                                           if in_planes != out_planes else None)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu_0(self.batchnorm_0(x))
        # with a projection shortcut, both branches take the activated input (as in the reference)
        residual = self.shortcut(activated) if self.shortcut is not None else x
        padded = F.pad(activated, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(padded))))
        return residual + out


class DMWideResNet(_HeadMixin, nn.Module):
    """WideResNet-depth-width of Gowal et al. (2020) with Swish, the model of SCORE's DDPM runs (vitlab spec §3.1).

    Converted checkpoints (RobustBench ``DMWideResNet``) load through :func:`checkpoint_filter_fn`; the reference's
    in-model mean/std buffers are dropped because normalisation lives in :class:`~vitlab.models.ImageClassifier`.
    """

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, in_chans: int = 3,
                 act_layer: type[nn.Module] = nn.SiLU, bn_momentum: float = 0.01, **kwargs: Any) -> None:
        super().__init__()
        _reject_unknown(kwargs, "DMWideResNet")
        if (depth - 4) % 6 != 0:
            raise ConfigError(f"DMWideResNet: depth {depth} must be 6n + 4")
        blocks_per_group = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.num_classes = num_classes
        self.init_conv = nn.Conv2d(in_chans, channels[0], 3, 1, 1, bias=False)
        groups = []
        self.feature_info: list[dict[str, Any]] = []
        for g, stride in enumerate((1, 2, 2)):
            blocks = [DMBlock(channels[g] if i == 0 else channels[g + 1], channels[g + 1], stride if i == 0 else 1,
                              act_layer, bn_momentum) for i in range(blocks_per_group)]
            groups.append(_BlockGroup(blocks))
            self.feature_info.append({"num_chs": channels[g + 1], "reduction": 2 ** g,
                                      "module": f"layer.{g}"})
        self.layer = nn.Sequential(*groups)
        self.batchnorm = HaikuBatchNorm2d(channels[3], momentum=bn_momentum)
        self.relu = act_layer()
        self.num_features = channels[3]
        self.fc = nn.Linear(channels[3], num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.relu(self.batchnorm(self.layer(self.init_conv(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class _BlockGroup(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


def _reject_unknown(kwargs: dict[str, Any], name: str) -> None:
    # timm passes pretrained_cfg* and feature options; anything else is a user mistake worth naming
    extra = {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and v is not None
             and k not in ("drop_rate", "drop_path_rate", "global_pool", "img_size")}
    if extra:
        raise TypeError(f"{name}: unexpected arguments {sorted(extra)}")


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Convert a released state dict to this file's names.

    Accepts a ``{"state_dict": ...}`` / ``{"model_state_dict": ...}`` wrapper, strips ``module.`` and ``model.``
    prefixes (DataParallel, RobustBench wrappers), renames the reference classifiers (``linear.`` in the AutoAttack
    ResNet-18, ``logits.`` in DMWideResNet) to ``fc.``, and drops in-model ``mean``/``std`` buffers.
    """
    for key in ("model_state_dict", "state_dict", "model"):
        inner: Any = state_dict.get(key)
        if isinstance(inner, dict):
            state_dict = inner
    out: dict[str, Tensor] = {}
    for name, value in state_dict.items():
        for prefix in ("module.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name in ("mean", "std"):
            continue
        for old in ("linear.", "logits."):
            if name.startswith(old):
                name = "fc." + name[len(old):]
        out[name] = value
    return out


class _StageFeatures(nn.Module):
    """``features_only=True``: the output of every stage listed in ``feature_info`` (B, C_s, H_s, W_s)."""

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        from timm.models._features import FeatureInfo

        info: list[dict[str, Any]] = model.feature_info  # type: ignore[assignment]
        indices = tuple(out_indices) if out_indices is not None else tuple(range(len(info)))
        self.model = model
        self.feature_info = FeatureInfo(info, indices)
        self._modules_out = [model.get_submodule(info[i]["module"]) for i in indices]

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs: list[Tensor] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in self._modules_out]
        try:
            self.model.forward_features(x)  # type: ignore[operator]
        finally:
            for h in handles:
                h.remove()
        return outputs


def _create(cls: type[nn.Module], pretrained: bool, first_conv: str = "conv1", **kwargs: Any) -> nn.Module:
    if pretrained:
        raise ConfigError(f"{cls.__name__}: no weights download (vitlab is offline); load a state dict with "
                          "`vitlab attack --weights PATH` or torch.load + checkpoint_filter_fn")
    features_only = bool(kwargs.pop("features_only", False))
    out_indices = kwargs.pop("out_indices", None)
    model = cls(**kwargs)
    # These models take [0, 1] inputs unnormalised (the reference CIFAR-10 checkpoints were trained that way).
    cfg = {"input_size": (kwargs.get("in_chans", 3), 32, 32), "num_classes": model.num_classes,
           "mean": (0.0,) * kwargs.get("in_chans", 3), "std": (1.0,) * kwargs.get("in_chans", 3),
           "first_conv": first_conv, "classifier": "fc", "crop_pct": 1.0, "interpolation": "bilinear"}
    model.pretrained_cfg = model.default_cfg = cfg  # type: ignore[assignment]
    return _StageFeatures(model, out_indices) if features_only else model


@register_vitlab_model
def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-18 for 32×32 inputs, 11.17M parameters; the AutoAttack example model's architecture."""
    return _create(CifarResNet, pretrained, layers=(2, 2, 2, 2), **kwargs)


@register_vitlab_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-20 of the data-free-quantisation CIFAR experiments (pytorchcv ``resnet20_cifar10`` layout), 0.27M
    parameters: 3×3 stem, 3 stages × 3 basic blocks of widths 16/32/64, 1×1-conv + BN shortcuts where the shape
    changes; 21 BatchNorm2d layers, so ClusterQ aligns the last 12 (start 9, spec clusterq §2.2)."""
    if pretrained:
        raise ConfigError("cifar_resnet20: no weights download (vitlab is offline); train it with a recipe")
    return CifarResNet(layers=(3, 3, 3), widths=(16, 32, 64), **kwargs)


@register_vitlab_model
def preact_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """PreActResNet-18 for 32×32 inputs (SCORE ``without_DDPM``, Bag of Tricks for AT)."""
    return _create(PreActResNet, pretrained, layers=(2, 2, 2, 2), **kwargs)


@register_vitlab_model
def preact_resnet_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Pre-activation ResNet with widths 16/32/64 and one block per stage: the SCORE CPU plan's model (spec §6)."""
    return _create(PreActResNet, pretrained, layers=(1, 1, 1), widths=(16, 32, 64), **kwargs)


@register_vitlab_model
def dm_wrn28_10(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DeepMind WideResNet-28-10 with Swish (SCORE / Pang2022Robustness_WRN28_10), 36.48M parameters."""
    return _create(DMWideResNet, pretrained, first_conv="init_conv", depth=28, width=10, **kwargs)


@register_vitlab_model
def test_cifar_resnet(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A tiny CIFAR ResNet for tests."""
    return _create(CifarResNet, pretrained, layers=(1, 1), widths=(8, 16), **kwargs)


def load_state_dict_file(model: nn.Module, path: str) -> nn.Module:
    """Load a released state dict file into ``model`` (strict), naming the file and the mismatching keys on error."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"weights {path}: file not found") from None
    except Exception as exc:
        raise CheckpointError(f"weights {path}: not a readable PyTorch state dict ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"weights {path}: expected a state dict, got {type(raw).__name__}")
    state = checkpoint_filter_fn(raw, model)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"weights {path}: does not match {type(model).__name__} (missing "
                              f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
    return model
