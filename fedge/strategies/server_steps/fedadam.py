"""FedAdam (Reddi et al. 2021): Adam on the server over averaged client changes."""

from __future__ import annotations

import numpy as np

from fedge.strategies.server_steps.adaptive import AdaptiveServerOptimizer

__all__ = ["FedAdam"]


class FedAdam(AdaptiveServerOptimizer):
    """``v = beta_2*v + (1-beta_2)*delta^2``."""

    name = "fedadam"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1 - self.beta_2) * delta_sq
