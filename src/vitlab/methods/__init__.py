"""Training methods, one module per paper (and per baseline), and the schemas of their ``method`` sections, one
torch-free module per method module in :mod:`vitlab.methods.schemas`.

The names below (``METHODS``, ``Method``, ``register_method``, ...) and the method modules (``vitlab.methods.mugs``,
...) import every built-in method on first use, which registers it (``method.name`` in a recipe) with
:func:`register_method`; ``import vitlab.methods`` alone imports nothing else, so that a schema module loads without
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names as type checkers see them; at run time they are imported on first use
    from vitlab.methods.base import METHODS, DataInfo, Method, Progress, StepHelper, build_method, register_method

#: the modules of the built-in methods (``vitlab.methods.<name>``), imported together by :func:`load_builtin_methods`
BUILTIN_MODULES = ("adversarial", "clusterq", "gdfq", "hat", "int8", "mugs", "rift", "score", "sun", "supervised",
                   "transzero", "video", "zeroq")
_BASE_NAMES = ("METHODS", "DataInfo", "Method", "Progress", "StepHelper", "build_method", "register_method")

__all__ = ["METHODS", "DataInfo", "Method", "Progress", "StepHelper", "build_method", "load_builtin_methods",
           "register_method"]


def load_builtin_methods() -> None:
    """Import every built-in method module, which registers its methods and their schemas (once; then a no-op)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(f"vitlab.methods.{module}")


def __getattr__(name: str) -> object:
    """``vitlab.methods.METHODS`` and the other names of ``__all__``, and the method modules: the built-in methods
    are imported (and registered) first."""
    if name in _BASE_NAMES or name in BUILTIN_MODULES:
        load_builtin_methods()
        module = importlib.import_module(f"vitlab.methods.{name}" if name in BUILTIN_MODULES else "vitlab.methods.base")
        value = module if name in BUILTIN_MODULES else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitlab.methods' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_BASE_NAMES) | set(BUILTIN_MODULES))
