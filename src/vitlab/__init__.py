"""vitlab: ten 2021-2022 papers on vision transformers, robustness, compression and learning from little data."""

from vitlab import models as models  # noqa: F401  (registers vitlab models in timm)
from vitlab.plugins import load_method_plugins as load_method_plugins  # methods load on first use, not on import

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """The Python API, imported on first use (``import vitlab`` stays light): ``vitlab.episodes``."""
    if name == "episodes":
        from vitlab.evaluation.episodes_command import episodes

        return episodes
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")
