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
    """Build the model ``spec`` names, with deterministic initial weights.

    Seeds the CPU generator only (models live on the CPU): ``torch.manual_seed``
    also queues a lazy seed for CUDA, XPU and MTIA, each with
    ``traceback.format_stack()``, which stats the source file of every frame. That
    took ~0.1 ms alone and 50-230 ms with other busy threads in the process (every
    ``stat`` gives up the GIL), the bulk of an agent's global-model check when many
    agents share a process (benchmarks/round.py). The CPU state, hence the
    weights, are the same.
    """
    torch.default_generator.manual_seed(seed)
    return MODELS[spec.name](spec)
