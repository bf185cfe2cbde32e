"""The ``method`` section of SCORE (:mod:`vitlab.methods.score`): its schema, without torch, so that a recipe's mistake
is reported before the method loads (docs/engine.md, "Methods and their schemas")."""

from __future__ import annotations

from dataclasses import dataclass

from vitlab.methods.schemas.adversarial import TRADESConfig


@dataclass
class SCOREConfig(TRADESConfig):
    name: str = "score"
    distance: str = "se"  # the squared Euclidean distance between softmax outputs (SCORE's defining change)
    beta: float = 4.0  # README example; SCORE's released checkpoints use 3.0
