"""Dealing run-to-failure units out to simulated clients (IID and non-IID)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from fedge.data.simulator import UnitRun
from fedge.errors import DataError

__all__ = ["split_iid", "split_noniid"]

R = TypeVar("R", bound=UnitRun)


def split_iid(runs: Sequence[R], clients: int, rng: np.random.Generator) -> list[list[R]]:
    """Units shuffled and dealt into ``clients`` groups of (almost) equal size."""
    if not 0 < clients <= len(runs):
        raise DataError(f"cannot deal {len(runs)} units to {clients} clients")
    order = rng.permutation(len(runs))
    return [[runs[i] for i in chunk] for chunk in np.array_split(order, clients)]


def split_noniid(
    runs: Sequence[R],
    clients: int,
    rng: np.random.Generator,
    *,
    min_units: int = 3,
    concentration: float = 0.7,
) -> list[list[R]]:
    """Label and quantity skew: units sorted by lifetime, cut into contiguous groups.

    Group sizes are ``min_units`` plus a Dirichlet(``concentration``) share of the
    rest, so each client sees its own lifetime range and its own amount of data.
    """
    order = sorted(range(len(runs)), key=lambda i: runs[i].n_cycles)
    spare = len(runs) - clients * min_units
    if clients < 1 or spare < 0:
        raise DataError(f"{len(runs)} units cannot give {clients} clients {min_units} each")
    extra = np.floor(rng.dirichlet(np.full(clients, concentration)) * spare).astype(int)
    extra[: spare - int(extra.sum())] += 1
    bounds = np.concatenate([[0], np.cumsum(min_units + extra)])
    return [[runs[i] for i in order[bounds[c] : bounds[c + 1]]] for c in range(clients)]
