"""FedProx (Li et al. 2020): FedAvg on the server, a proximal term on the clients.

The server side is the identity step; what changes is that every round announcement
carries ``proximal_mu`` so local training minimises
``loss + mu/2 * ||w - w_global||^2``, which limits client drift on non-IID data.
"""

from __future__ import annotations

from fedge.strategies.server_steps.fedavg import FedAvg

__all__ = ["FedProx"]


class FedProx(FedAvg):
    """The identity step; clients train with a proximal term of strength ``mu``."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01) -> None:
        if not mu >= 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        self.mu = float(mu)

    def client_options(self) -> dict[str, float]:
        return {"proximal_mu": self.mu}
