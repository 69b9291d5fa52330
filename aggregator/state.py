"""The aggregator's durable state as a plain value, apart from the file store that keeps it.

The sans-I/O :class:`~aggregator.coordinator.RoundCoordinator` starts from and emits
:class:`Checkpoint` values; :class:`~aggregator.checkpoint.CheckpointStore` writes and
reads them. Keeping the type here means the coordinator never imports file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedge.spec import ModelSpec

__all__ = ["Checkpoint"]


@dataclass(frozen=True)
class Checkpoint:
    """The aggregator's durable state after a completed round."""

    fleet: str
    version: int
    round_id: int
    spec: ModelSpec
    tensors: dict[str, np.ndarray]
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)
    stats_done: bool = True
