"""The Python API: each function a thin front to the code the matching command runs (docs/api.md).

    x_adv, report = vitlab.attack(model, x, y, eps=8 / 255, attack="autoattack")    # vitlab attack
    summary = vitlab.quantize(model, 4, 4, method="clusterq")                      # vitlab quantize
    result = vitlab.frequency_analysis(model, loader)                              # vitlab analyze frequency
    table = vitlab.episodes(model, dataset)                                        # vitlab eval --episodes

``model`` is an ``nn.Module`` that takes images in [0, 1] (put normalisation inside it, e.g. with
:class:`~vitlab.models.classifier.ImageClassifier`), or for :func:`quantize` also ``"path/to/file.py:factory"``, a
timm / vitlab name or a vitlab checkpoint path.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["attack", "frequency_analysis", "quantize"]


def attack(model: nn.Module, x: Tensor, y: Tensor, eps: float = 8 / 255, attack: str = "autoattack",
           norm: str = "Linf", seed: int = 0, steps: int | None = None, version: str = "standard",
           attacks: Sequence[str] | None = None, backend: str = "reference",
           batch_size: int = 250) -> tuple[Tensor, dict[str, Any]]:
    """Attack ``model`` on (x (N, C, H, W) in [0, 1], y (N,)): the code ``vitlab attack`` runs.

    Args:
        attack: autoattack | apgd-ce | apgd-t | pgd. version: autoattack's "standard" cascade or "custom" with
            ``attacks`` (e.g. ["apgd-ce"]); backend: "reference" (the official code) or "native".
        steps: iterations (default: PGD 20, APGD 100).
    Returns:
        ``(x_adv, report)``: adversarial inputs (N, C, H, W) and ``{"n", "clean_accuracy", "robust_accuracy",
        "per_attack", "max_perturbation", "seconds", "warnings", ...}`` (accuracies as fractions).
    """
    from vitlab.attacks.command import attack_points

    return attack_points(model, x, y, attack, norm, eps, seed=seed, steps=steps, version=version,
                         attacks=list(attacks) if attacks else None, backend=backend, batch_size=batch_size)


def _points(data: Any, n: int | None = None) -> tuple[Tensor, Tensor]:
    """Images and labels from a loader or data set of ``{"image", "label"}`` dicts or ``(x, y)`` pairs."""
    from vitlab.evaluation.robust import collect

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        return data[0][:n], data[1][:n]
    first = next(iter(data))
    if isinstance(first, dict):
        return collect(data, n)
    xs, ys = [], []
    for x, y in data:  # type: ignore[misc]
        xs.append(x if x.dim() == 4 else x.unsqueeze(0))
        ys.append(torch.as_tensor(y).reshape(-1))
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    return (x_all[:n], y_all[:n]) if n is not None else (x_all, y_all)


def frequency_analysis(model: nn.Module, loader: Iterable[Any] | tuple[Tensor, Tensor],
                       radii: Sequence[float] | None = None, n: int | None = None, spectrum_n: int = 64,
                       delta_eps: float = 0.0, batch_size: int = 256) -> dict[str, Any]:
    """Low- / high-pass filtered accuracy and feature-map spectra: the code ``vitlab analyze frequency`` runs.

    Args:
        loader: a DataLoader or data set of ``{"image", "label"}`` dicts or ``(x, y)`` batches, or one ``(x, y)``;
            images in [0, 1]. n: use the first n images. radii: filter radii in frequency bins (default: those of
            1, 2, 4, 6, 8, 12, 16 that fit). delta_eps: also the spectrum of HAT's perturbation (0: skip).
    Returns:
        ``{"clean_top1", "lowpass": {radius: top1}, "highpass": {radius: top1}, "spectra": {layer: [values]},
        "warnings"}`` with accuracies in %; spectrum element k is at frequency pi * k / (len - 1). A model that shows
        no feature map (no timm feature API, no blocks / stages / layers) gets the input's spectrum and a warning.
    """
    from vitlab.analysis.command import frequency_points

    x, y = _points(loader, n)
    rows, curves, warnings = frequency_points(model, x, y, list(radii) if radii is not None else None, batch_size,
                                              spectrum_n, delta_eps)
    return {"clean_top1": rows[0]["lowpass"], "lowpass": {r["radius"]: r["lowpass"] for r in rows[1:]},
            "highpass": {r["radius"]: r["highpass"] for r in rows[1:]},
            "spectra": {name: curve.tolist() for name, curve in curves.items()}, "warnings": warnings}


def quantize(model: nn.Module | str | Path, wbits: int, abits: int, method: str = "clusterq",
             config: str | Path | None = None, overrides: Sequence[str] = (), weights: str | Path | None = None,
             input_size: str | Sequence[int] | None = None, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, overwrite: bool = True) -> dict[str, Any]:
    """Data-free quantisation (clusterq | gdfq | zeroq) of a BatchNorm network: the code ``vitlab quantize`` runs.

    Args:
        model: an ``nn.Module`` (inputs in [0, 1]; kept in this process only), ``"path/to/file.py:factory"`` or a
            timm / vitlab name (with ``weights``), or the path of a vitlab checkpoint.
        config: the recipe (default: recipes/quant/<method>_resnet20_digits.yaml of the source tree): its data set is
            the one the quantised model is evaluated on, its schedule how long the method runs.
        overrides: recipe overrides, e.g. ["train.epochs=1", "out_dir=/tmp/runs"].
        input_size, mean, std: the model's input convention when it does not carry one (see
            :mod:`vitlab.models.external`).
    Returns:
        ``{"method", "wbits", "abits", "fp_top1", "quant_top1_simulated", "fp32_bytes", "quantized_bytes", "ckpt"}``.
    """
    from vitlab.quant.command import _outside_teacher
    from vitlab.quant.command import quantize as run_quantize

    if config is None:
        from vitlab.demo.sections import recipe_path

        config = recipe_path(f"quant/{method}_resnet20_digits.yaml")
    sets = list(overrides)
    if isinstance(model, (str, Path)) and Path(model).suffix == ".ckpt":
        ckpt = str(model)
    else:
        from vitlab.models.external import register_module

        spec = register_module(model) if isinstance(model, nn.Module) else str(model)
        size = ",".join(map(str, input_size)) if input_size is not None and not isinstance(input_size, str) \
            else input_size
        args = argparse.Namespace(config=str(config), set=sets, model=spec, model_args=None, weights=weights,
                                  num_classes=None, input_size=size, input_range=None,
                                  mean=list(mean) if mean is not None else None,
                                  std=list(std) if std is not None else None)
        ckpt, sizes = _outside_teacher(args)
        sets = sizes + sets
    return run_quantize(str(config), ckpt, method, wbits, abits, sets, overwrite)
