"""SCORE (Pang et al., ICML 2022, "Robustness and Accuracy Could Be Reconcilable by (Proper) Definition").

SCORE is TRADES with the KL divergence replaced by the squared Euclidean distance between softmax outputs, in the
natural term, the robust term and the inner maximisation (vitlab spec ``score.md`` §2): ``distance: se``. Everything
else (the outer passes, BN handling during the attack, the generated-data mix, the weight EMA with SCORE's restarting
decay ``ema_schedule: score``) is the :class:`~vitlab.methods.adversarial.TRADES` machinery, which SCORE's code shares
with its TRADES baseline; the hyper-parameters are SCORE's flags, in brackets in
:class:`~vitlab.methods.adversarial.AdversarialConfig`.
"""

from __future__ import annotations

from vitlab.methods.adversarial import TRADES
from vitlab.methods.base import register_method
from vitlab.methods.schemas.score import SCOREConfig

__all__ = ["SCORE", "SCOREConfig"]


@register_method("score")
class SCORE(TRADES):
    """TRADES with SCORE's defaults: the SE distance in the natural term, the robust term and the attack."""

    config_class = SCOREConfig
