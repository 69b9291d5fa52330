"""Which architecture a :class:`~fedge.spec.ModelSpec` names, and building it.

One table from ``ModelSpec.name`` to the :class:`~fedge.models.base.FaultModel`
subclass; the architectures import only the base, so there is no import circle.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedge.models.base import FaultModel
from fedge.models.cnn import CnnModel
from fedge.models.gru import GruModel
from fedge.spec import ModelSpec

__all__ = ["MODELS", "build_model"]

MODELS: dict[str, Callable[[ModelSpec], FaultModel]] = {
    "cnn": CnnModel,
    "gru": GruModel,
}


def build_model(spec: ModelSpec, *, seed: int = 0) -> FaultModel:
    """Build the model ``spec`` names, with deterministic initial weights."""
    torch.manual_seed(seed)
    return MODELS[spec.name](spec)
