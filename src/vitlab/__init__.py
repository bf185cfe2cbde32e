"""vitlab: ten 2021-2022 papers on vision transformers, robustness, compression and learning from little data.

``import vitlab`` is light (no torch): the command line parses and checks a recipe in a fraction of a second. The
models register in timm's registry as soon as timm is there: at once when timm was imported first, otherwise right
after the first ``import timm`` (so ``import vitlab; timm.create_model("iformer_small")`` works in either order).
The Python API (docs/api.md) and ``vitlab.models`` are imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

from vitlab.plugins import load_method_plugins as load_method_plugins  # methods load on first use, not on import

__version__ = "0.1.0"


_API = {"attack": "vitlab.api", "quantize": "vitlab.api", "frequency_analysis": "vitlab.api",
        "episodes": "vitlab.evaluation.episodes_command"}
__all__ = ["attack", "episodes", "frequency_analysis", "load_method_plugins", "models", "quantize"]


def __getattr__(name: str) -> object:
    """The Python API (docs/api.md), imported on first use so ``import vitlab`` stays light: ``vitlab.attack``,
    ``vitlab.quantize``, ``vitlab.frequency_analysis``, ``vitlab.episodes``, and the package ``vitlab.models``."""
    if name == "models":
        return importlib.import_module("vitlab.models")
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API) | {"models"})


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Imports ``vitlab.models`` (which registers every vitlab model in timm) right after ``timm`` is imported.

    It finds ``timm`` with the other finders and wraps the loader's ``exec_module``; it removes itself on first use.
    """

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> Any:
        if fullname != "timm":
            return None
        _remove_timm_hook()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_timm = spec.loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_timm(module)
            importlib.import_module("vitlab.models")

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def _remove_timm_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterTimm)]


if "timm" in sys.modules:
    importlib.import_module("vitlab.models")
else:
    sys.meta_path.insert(0, _RegisterAfterTimm())
