"""Privacy accounting for client-level DP rounds, with Google's ``dp-accounting``.

Each published training round is one Gaussian mechanism on the sum of clipped
updates, sensitivity ``C`` (add/remove one device), noise std ``z_eff C`` where
``z_eff = z sqrt(n_actual / n_expected)`` (fewer devices than expected carry less
noise). With a configured population the round is treated as Poisson-subsampled
with ``q = n_actual / population``. Rounds compose in an RDP accountant
(:class:`dp_accounting.rdp.RdpAccountant` over the integer orders 2..256, whose
subsampled-Gaussian RDP it computes exactly; its fractional-order series fails to
converge for small q), reported as epsilon at the configured delta.

The aggregator's own view is accounted separately: it sees every participating
update with noise multiplier ``z / sqrt(n_expected)``, no subsampling (it knows
who took part), composed over every round (a device may be in all of them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dp_accounting
from dp_accounting import rdp

from fedge.messages import DpConfig

__all__ = [
    "ORDERS",
    "PrivacyAccountant",
    "noise_multiplier_for_epsilon",
    "round_event",
    "round_noise_multiplier",
]

ORDERS: tuple[float, ...] = tuple(float(order) for order in range(2, 257))
"""RDP orders evaluated; epsilon is the minimum over them."""


def round_noise_multiplier(dp: DpConfig, participants: int) -> float:
    """``z sqrt(participants / expected_clients)``: the sum's noise over its sensitivity."""
    if participants < 1:
        raise ValueError("a round without participants releases nothing")
    return dp.noise_multiplier * math.sqrt(participants / dp.expected_clients)


def round_event(noise_multiplier: float, sampling_rate: float) -> dp_accounting.DpEvent:
    """The DpEvent of one round: a Gaussian mechanism, Poisson-subsampled if ``q < 1``."""
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling rate must be in (0, 1], got {sampling_rate}")
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate >= 1:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)


class PrivacyAccountant:
    """Composes the rounds of one training run; ``epsilon`` is the running total."""

    def __init__(self, delta: float, *, orders: Sequence[float] = ORDERS) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta = delta
        self._orders = list(orders)
        self._accountant = rdp.RdpAccountant(self._orders)
        self.rounds = 0

    def record(self, noise_multiplier: float, sampling_rate: float = 1.0, *,
               count: int = 1) -> None:
        """Compose ``count`` rounds of noise multiplier ``z`` and sampling rate ``q``."""
        if count < 1:
            return
        event = round_event(noise_multiplier, sampling_rate)
        self._accountant.compose(event if count == 1 else
                                 dp_accounting.SelfComposedDpEvent(event, count))
        self.rounds += count

    @property
    def epsilon(self) -> float:
        """Epsilon at :attr:`delta` of everything recorded (0 before the first round)."""
        if self.rounds == 0:
            return 0.0
        return float(self._accountant.get_epsilon(self.delta))


def noise_multiplier_for_epsilon(
    epsilon: float, delta: float, *, rounds: int, sampling_rate: float = 1.0
) -> float:
    """The noise multiplier ``z`` that gives ``epsilon`` after ``rounds`` rounds at ``delta``."""

    def make_event(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(round_event(z, sampling_rate), rounds)

    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: rdp.RdpAccountant(list(ORDERS)),
            make_event,
            epsilon,
            delta,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        )
    )
