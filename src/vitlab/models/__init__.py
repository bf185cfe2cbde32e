"""Model families. Importing this package registers every vitlab model in timm's registry."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TypeVar, cast

from timm.models import register_model

_F = TypeVar("_F", bound=Callable)
_VITLAB_MODELS: list[str] = []


def register_vitlab_model(fn: _F) -> _F:
    """timm's ``@register_model``, also recording the name as a vitlab model (for ``vitlab models`` and the tests)."""
    _VITLAB_MODELS.append(fn.__name__)
    return cast(_F, register_model(fn))


def list_vitlab_models(pattern: str = "*") -> list[str]:
    """Names of the registered vitlab models matching a shell-style pattern, sorted."""
    return sorted(name for name in _VITLAB_MODELS if fnmatch.fnmatch(name, pattern))
from vitlab.models import cifar_resnet as cifar_resnet  # noqa: E402,F401
from vitlab.models import dualformer as dualformer  # noqa: E402,F401
from vitlab.models import fewshot as fewshot  # noqa: E402,F401
from vitlab.models import frame_average as frame_average  # noqa: E402,F401
from vitlab.models import iformer as iformer  # noqa: E402,F401
from vitlab.models.fewshot import NoFeatureMapError, feature_map, pooled_feature  # noqa: E402

__all__ = [
    "NoFeatureMapError",
    "feature_map",
    "list_vitlab_models",
    "pooled_feature",
    "register_vitlab_model",
]
