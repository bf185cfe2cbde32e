"""Training methods. Importing this package registers every built-in method (``method.name`` in a recipe)."""

from vitlab.methods.adversarial import PGDAT, SCORE, TRADES  # noqa: E402,F401
from vitlab.methods.base import METHODS, DataInfo, Method, Progress, StepHelper, build_method, register_method
from vitlab.methods.hat import HAT  # noqa: E402,F401
from vitlab.methods.supervised import Supervised
from vitlab.methods.video import VideoSupervised  # noqa: E402,F401

__all__ = ["METHODS", "DataInfo", "Method", "Progress", "StepHelper", "Supervised", "build_method",
           "register_method"]
from vitlab.methods import clusterq, gdfq, int8, zeroq  # noqa: E402,F401
from vitlab.methods.mugs import Mugs  # noqa: E402,F401
