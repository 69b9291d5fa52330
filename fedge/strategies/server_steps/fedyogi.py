"""FedYogi (Reddi et al. 2021): Yogi's additive second moment, steadier than Adam's."""

from __future__ import annotations

import numpy as np

from fedge.strategies.server_steps.adaptive import AdaptiveServerOptimizer

__all__ = ["FedYogi"]


class FedYogi(AdaptiveServerOptimizer):
    """``v = v - (1-beta_2)*delta^2*sign(v - delta^2)``: v grows or shrinks by a bounded step."""

    name = "fedyogi"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        updated: np.ndarray = v - (1 - self.beta_2) * delta_sq * np.sign(v - delta_sq)
        return updated
