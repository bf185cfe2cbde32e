"""vitlab: ten 2021-2022 papers on vision transformers, robustness, compression and learning from little data."""

from vitlab import models as models  # noqa: F401  (registers vitlab models in timm)
from vitlab.plugins import load_method_plugins as load_method_plugins  # methods load on first use, not on import

__version__ = "0.1.0"


_API = {"attack": "vitlab.api", "quantize": "vitlab.api", "frequency_analysis": "vitlab.api",
        "episodes": "vitlab.evaluation.episodes_command"}
__all__ = ["attack", "episodes", "frequency_analysis", "load_method_plugins", "models", "quantize"]


def __getattr__(name: str) -> object:
    """The Python API (docs/api.md), imported on first use so ``import vitlab`` stays light: ``vitlab.attack``,
    ``vitlab.quantize``, ``vitlab.frequency_analysis``, ``vitlab.episodes``."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
