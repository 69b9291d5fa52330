"""Shared machinery of the adaptive server optimisers (Reddi et al. 2021, "FedOpt").

The round's change ``delta = aggregate - w`` (for the ``mean`` reducer, the
averaged client change) is treated as a (negative) gradient; first and second
moments are kept per tensor; the update is ``w' = w + eta * m / (sqrt(v) + tau)``.
FedAdam and FedYogi differ only in how the second moment ``v`` is updated, which
each subclass provides.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

import numpy as np

from fedge.strategies.params import Params
from fedge.strategies.server_steps.base import ServerStep

__all__ = ["AdaptiveServerOptimizer"]


class AdaptiveServerOptimizer(ServerStep):
    """Base for FedAdam / FedYogi: holds m and v, subclasses define ``second_moment``."""

    def __init__(
        self, eta: float = 1e-2, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3
    ) -> None:
        if not (eta > 0 and 0 <= beta_1 < 1 and 0 <= beta_2 < 1 and tau > 0):
            raise ValueError(
                f"bad {self.name} parameters: eta={eta}, betas=({beta_1}, {beta_2}), tau={tau}"
            )
        self.eta, self.beta_1, self.beta_2, self.tau = (
            float(eta),
            float(beta_1),
            float(beta_2),
            float(tau),
        )
        self._m: dict[str, np.ndarray] = {}
        self._v: dict[str, np.ndarray] = {}

    @abstractmethod
    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """The new second-moment estimate from the old one and ``delta**2``."""

    def step(
        self, current: Mapping[str, np.ndarray], aggregate: Mapping[str, np.ndarray]
    ) -> Params:
        out: Params = {}
        for name, w in current.items():
            w64 = np.asarray(w, np.float64)
            delta = np.asarray(aggregate[name], np.float64) - w64
            m = self._m.get(name, np.zeros_like(w64))
            m = self.beta_1 * m + (1 - self.beta_1) * delta
            # v starts at tau^2 as in the paper, so the first step is bounded by eta/tau * m.
            v = self._v.get(name, np.full_like(w64, self.tau**2))
            v = self.second_moment(v, delta * delta)
            self._m[name], self._v[name] = m, v
            out[name] = (w64 + self.eta * m / (np.sqrt(v) + self.tau)).astype(np.float32)
        return out

    def state(self) -> Params:
        state = {f"m/{k}": v.copy() for k, v in self._m.items()}
        state.update({f"v/{k}": v.copy() for k, v in self._v.items()})
        return state

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self._m = {k[2:]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith("m/")}
        self._v = {k[2:]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith("v/")}
        unknown = [k for k in state if not k.startswith(("m/", "v/"))]
        if unknown:
            raise ValueError(f"unexpected {self.name} state: {unknown[:3]}")
