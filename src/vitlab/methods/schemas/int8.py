"""The ``method`` section of an int8 model (:mod:`vitlab.methods.int8`): its schema, without torch, so that a recipe's
mistake is reported before the method loads (docs/engine.md, "Methods and their schemas")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from vitlab.config import MethodConfig

Int8Engine = Literal["x86", "fbgemm", "onednn", "qnnpack"]  # torch's quantized CPU engines
INT8_ENGINES: tuple[str, ...] = get_args(Int8Engine)


@dataclass
class Int8Config(MethodConfig):
    name: str = "int8"
    engine: Int8Engine = "x86"
    source_ckpt: str = ""  # the checkpoint it was converted from (a record)
    source_method: str = ""  # zeroq | gdfq | clusterq | supervised ...
    calibration: str = ""  # generator | distilled | zeroq-distilled: where calibration images came from
