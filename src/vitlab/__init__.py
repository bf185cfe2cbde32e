"""vitlab: ten 2021-2022 papers on vision transformers, robustness, compression and learning from little data."""

from vitlab import models as models  # noqa: F401  (registers vitlab models in timm)

__version__ = "0.1.0"
