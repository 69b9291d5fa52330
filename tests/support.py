"""Helpers shared by the test tiers (ports, waiting). No fixtures here.

``free_port`` and ``wait_for_port`` are the ones of :mod:`fedge_app.servers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fedge_app.servers import free_port, wait_for_port

__all__ = ["free_port", "wait_for_port", "wait_until"]


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
