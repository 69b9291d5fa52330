"""GRU alternative: a single recurrent layer read out at the last time step."""

from __future__ import annotations

import torch
from torch import nn

from fedge.models.base import FaultModel
from fedge.spec import ModelSpec

__all__ = ["GruModel"]


class GruModel(FaultModel):
    """One GRU layer; the last hidden state feeds both heads."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec, spec.hidden)
        self.gru = nn.GRU(spec.model_features, spec.hidden, batch_first=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        h: torch.Tensor = out[:, -1, :]
        return h
