"""Torch-free vocabularies and checks shared by the recipe schemas (:mod:`vitlab.config`, :mod:`vitlab.methods.schemas`)
and the layers that implement them (attacks, losses, data, quantization).

They live here, below both, so that a schema can check a recipe without importing torch (docs/engine.md, "Methods and
their schemas") and a shared layer never imports from :mod:`vitlab.methods`. Only the standard library and
:mod:`vitlab.config` are imported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from vitlab.config import ConfigError

# --- threat models (vitlab.attacks.threat) and output distances (vitlab.losses.robust)

NORMS = ("Linf", "L2")
#: how the model runs while an attack computes gradients (``attack_mode`` of the training recipes)
AttackMode = Literal["eval", "train_frozen_bn", "train"]
ATTACK_MODES: tuple[str, ...] = get_args(AttackMode)
#: the distances between two probability vectors that ``score.distance`` accepts (besides an Lp norm "p=<number>")
DISTANCES = ("se", "kl", "js", "js_sqrt", "l1_square", "kl_sqrt", "rkl_sqrt")


def check_norm(norm: str) -> str:
    """The canonical spelling of ``norm`` ("Linf" or "L2"); any case is accepted. Raises ValueError otherwise."""
    canonical = {n.lower(): n for n in NORMS}
    key = str(norm).lower()
    if key not in canonical:
        raise ConfigError(f"norm: unknown norm {norm!r} (allowed: {', '.join(NORMS)})")
    return canonical[key]


def parse_eps(text: str | float) -> float:
    """Parse an attack budget: ``8/255``, ``0.031``, ``0.5``; ``2/255`` style fractions or plain numbers, ≥ 0."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+)\s*)?", str(text))
        if match is None:
            raise ConfigError(f"eps: cannot parse {text!r} (expected a number such as 0.031 or a fraction like 8/255)")
        value = float(match.group(1))
        if match.group(2) is not None:
            denominator = float(match.group(2))
            if denominator == 0:
                raise ConfigError(f"eps: {text!r} divides by zero")
            value /= denominator
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"eps: got {text!r}, expected a finite budget >= 0")
    return value


def check_distance_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a known distance or ``p=<positive number>``."""
    if name in DISTANCES:
        return
    if name.startswith("p="):
        try:
            if float(name[2:]) > 0:
                return
        except ValueError:
            pass
    raise ConfigError(f"unknown distance {name!r} (allowed: {', '.join(DISTANCES)} or p=<r> with r > 0)")


# --- SUN's patch loss (vitlab.losses.sun) and spatially consistent augmentation (vitlab.data.sca)

PatchTarget = Literal["multi_hot", "teacher_prob_topk"]
PatchReduction = Literal["mean", "sum"]


@dataclass
class SCAConfig:
    """SCA settings; defaults are the full-scale ones of §2.4 (the small digits plan: scale [0.35, 1], hflip 0)."""

    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # random-resized-crop area range
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5  # 0 for digits and glyphs: a flip changes the class
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"  # applied to the weak (shared) view
    rand_augment_prob: float = 0.2
    strong_prob: float = 0.5  # probability that the student view gets the non-spatial ops
    color_jitter: float = 0.4  # brightness, contrast and saturation strength
    blur_prob: float = 0.5
    blur_radius: list[float] = field(default_factory=lambda: [0.1, 2.0])
    solarize_prob: float = 0.5
    grey_prob: float = 0.2
    erasing: float = 0.25  # student only, always applied (timm RandomErasing, pixel mode)


# --- quantization (vitlab.quant.quantizer)

MIN_BITS, MAX_BITS = 2, 8  # the weight and activation bit widths the quantizers support
