"""Training methods, one module per paper (and per baseline). Importing this package registers every built-in method
(``method.name`` in a recipe) with :func:`register_method`."""

from vitlab.methods import adversarial, clusterq, gdfq, hat, int8, mugs, rift, score, sun, supervised, video, zeroq  # noqa: F401
from vitlab.methods.base import METHODS, DataInfo, Method, Progress, StepHelper, build_method, register_method

__all__ = ["METHODS", "DataInfo", "Method", "Progress", "StepHelper", "build_method", "register_method"]
