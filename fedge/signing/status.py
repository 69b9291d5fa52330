"""Freshness of signed device statuses (retained, so no nonce guard; sans-I/O).

A status is retained and its ``offline`` last will is signed when the agent
connects, so it is old by the time the broker publishes it: a nonce/age guard
would refuse exactly the messages that matter. Instead, per device:

* ``offline`` is always taken (a replayed old offline can only make a device
  miss a round, it cannot make anyone wait or trust anything);
* ``online`` is taken only if its signed timestamp is no older than the newest
  status already taken from that device, at most ``max_age_s`` behind the
  receiver's clock (agents re-publish their online status every
  ``status_interval_s``, far more often) and at most ``max_future_s`` ahead.

So a recorded "online" cannot be replayed later to make rounds wait for a device
that is gone, except within ``max_age_s`` of its signing (the price of statuses
that need no reply from the receiver). Memory: one float per device ever seen
(bounded by ``capacity``; the least recently updated device is forgotten first).
"""

from __future__ import annotations

import math
from collections import OrderedDict

from fedge.errors import ConfigError, RejectReason, SignatureError

__all__ = ["StatusStamps"]


class StatusStamps:
    """The newest signed ``online`` timestamp per device; refuses stale ``online`` statuses."""

    def __init__(
        self, *, max_age_s: float = 300.0, max_future_s: float = 30.0, capacity: int = 100_000
    ) -> None:
        if not (math.isfinite(max_age_s) and max_age_s > 0):
            raise ConfigError(f"max_age_s must be a positive number, got {max_age_s!r}")
        if not (math.isfinite(max_future_s) and max_future_s >= 0):
            raise ConfigError(f"max_future_s must be a non-negative number, got {max_future_s!r}")
        if capacity < 1:
            raise ConfigError(f"capacity must be at least 1, got {capacity!r}")
        self.max_age_s = max_age_s
        self.max_future_s = max_future_s
        self.capacity = capacity
        self._newest: OrderedDict[str, float] = OrderedDict()

    def newest(self, device: str) -> float | None:
        """The newest ``online`` timestamp taken from ``device`` (None if none yet)."""
        return self._newest.get(device)

    def check(self, device: str, ts: float, *, online: bool, now: float) -> None:
        """Take the status, or raise SignatureError STALE / CLOCK_SKEW (``online`` only).

        An ``offline`` status is always taken and leaves the stamps alone (a will is
        signed at connect time: older than the online statuses that followed it).
        """
        if not online:
            return
        if not math.isfinite(ts) or ts > now + self.max_future_s:
            raise SignatureError(
                RejectReason.CLOCK_SKEW, f"status of {device!r} stamped {ts!r}, now is {now!r}"
            )
        if ts < now - self.max_age_s:
            raise SignatureError(
                RejectReason.STALE,
                f"online status of {device!r} is {now - ts:.0f} s old (max {self.max_age_s})",
            )
        newest = self._newest.get(device)
        if newest is not None and ts < newest:
            raise SignatureError(
                RejectReason.STALE,
                f"online status of {device!r} stamped {ts!r} is older than {newest!r}",
            )
        self._newest[device] = ts
        self._newest.move_to_end(device)
        while len(self._newest) > self.capacity:
            self._newest.popitem(last=False)
