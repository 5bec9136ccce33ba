"""Steering generation: class conditions and label dropout, classifier-free guidance, reward-guided decoding
(SVDD, SMC) and the built-in rewards; each one a hook of the sampling core (sampling/core.py)."""

from .cfg import ClassifierFreeGuidance, guide
from .conditions import NULL_LABEL, Conditioned, drop_labels
from .smc import SMCProposer
from .svdd import SVDDProposer
from .value import PredictedReward

__all__ = ["ClassifierFreeGuidance", "Conditioned", "NULL_LABEL", "PredictedReward", "SMCProposer",
           "SVDDProposer", "drop_labels", "guide"]
