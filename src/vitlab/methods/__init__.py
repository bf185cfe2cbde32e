"""Training methods, one module per paper (and per baseline). Importing this package registers every built-in method
(``method.name`` in a recipe) with :func:`register_method`."""

from vitlab.methods import (  # noqa: F401
    adversarial,
    clusterq,
    gdfq,
    hat,
    int8,
    mugs,
    rift,
    score,
    sun,
    supervised,
    transzero,
    video,
    zeroq,
)
from vitlab.methods.base import METHODS, DataInfo, Method, Progress, StepHelper, build_method, register_method

__all__ = ["METHODS", "DataInfo", "Method", "Progress", "StepHelper", "build_method", "register_method"]
