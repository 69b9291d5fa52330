"""1-D CNN over sensor windows (after Li et al. 2018, scaled down for a Raspberry Pi)."""

from __future__ import annotations

import torch
from torch import nn

from fedge.config import ModelSpec
from fedge.models.base import FaultModel

__all__ = ["CnnModel"]


class CnnModel(FaultModel):
    """Three temporal convolutions, then a small fully connected layer over time x channels."""

    def __init__(self, spec: ModelSpec) -> None:
        dense = 64
        super().__init__(spec, dense)
        c = spec.hidden
        self.conv = nn.Sequential(
            nn.Conv1d(spec.n_features, c, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(c, c, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(c, c, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        # Flatten instead of global pooling: where in the window a change happens
        # carries the trend, which is what RUL depends on.
        self.dense = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.1), nn.Linear(c * spec.window, dense), nn.ReLU()
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = self.dense(self.conv(x.transpose(1, 2)))
        return h
