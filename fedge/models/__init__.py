"""Small fault-prediction models (RUL regression + failure-within-horizon head).

Every model takes windows shaped ``(batch, window, features)`` and returns
``(rul, failure_logit)``, each shaped ``(batch,)``. Inputs are normalised inside
the model with the ``input_mean``/``input_std`` buffers that the federated
statistics round fills in, so the normalisation travels with the weights.
"""

from fedge.models.base import (
    FaultModel,
    copy_state,
    count_parameters,
    load_tensors,
    state_tensors,
    trainable_names,
)
from fedge.models.registry import MODELS, build_model

__all__ = [
    "MODELS",
    "FaultModel",
    "build_model",
    "copy_state",
    "count_parameters",
    "load_tensors",
    "state_tensors",
    "trainable_names",
]
