"""Replay protection for signed messages (sans-I/O: the caller passes the clock in).

A signed message carries its signer, a random nonce and the signer's timestamp, all
covered by the signature (:mod:`fedge.signing`). :class:`ReplayGuard` accepts each
``(signer, nonce)`` once within a freshness window and refuses timestamps outside it.

Memory is bounded: past ``capacity`` remembered nonces the oldest is forgotten and
its timestamp becomes a *watermark*; from then on nothing stamped at or before the
watermark is accepted. So an evicted nonce can never be replayed; the price, under
a flood of genuine messages, is that late ones are refused as stale (fail closed).

Use it only after the signature verified: otherwise forged messages could fill it
and push the watermark up. Not thread-safe; one guard per receiving thread, or a lock.
"""

from __future__ import annotations

import heapq
import math

from fedge.errors import ConfigError, RejectReason, SignatureError

__all__ = ["ReplayGuard"]


class ReplayGuard:
    """Remembers ``(signer, nonce)`` pairs for ``max_age_s``; refuses repeats and stale stamps."""

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
        self._seen: set[tuple[str, str]] = set()
        self._by_time: list[tuple[float, str, str]] = []
        self._watermark = -math.inf

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def watermark(self) -> float:
        """Timestamps at or below this are refused (``-inf`` until a nonce is evicted)."""
        return self._watermark

    def check(self, signer: str, nonce: str, ts: float, *, now: float) -> None:
        """Accept and remember ``(signer, nonce)``, or raise SignatureError.

        Reasons: ``CLOCK_SKEW`` if ``ts`` is more than ``max_future_s`` ahead of ``now``;
        ``STALE`` if it is more than ``max_age_s`` behind or at/below the watermark;
        ``REPLAY`` if the pair was accepted before.
        """
        self._forget_before(now - self.max_age_s)
        if not math.isfinite(ts) or ts > now + self.max_future_s:
            raise SignatureError(
                RejectReason.CLOCK_SKEW,
                f"timestamp {ts!r} is more than {self.max_future_s} s ahead of {now!r}",
            )
        if ts < now - self.max_age_s:
            raise SignatureError(
                RejectReason.STALE, f"timestamp {ts!r} is over {self.max_age_s} s old at {now!r}"
            )
        if ts <= self._watermark:
            raise SignatureError(
                RejectReason.STALE,
                f"timestamp {ts!r} is at or before the replay watermark {self._watermark!r}",
            )
        key = (signer, nonce)
        if key in self._seen:
            raise SignatureError(RejectReason.REPLAY, f"nonce {nonce} from {signer!r} seen before")
        self._seen.add(key)
        heapq.heappush(self._by_time, (ts, signer, nonce))
        while len(self._seen) > self.capacity:
            old_ts, old_signer, old_nonce = heapq.heappop(self._by_time)
            self._seen.discard((old_signer, old_nonce))
            self._watermark = max(self._watermark, old_ts)

    def _forget_before(self, cutoff: float) -> None:
        # Entries older than the window need no memory: the age check refuses them anyway.
        while self._by_time and self._by_time[0][0] < cutoff:
            _, signer, nonce = heapq.heappop(self._by_time)
            self._seen.discard((signer, nonce))
