"""Counting refused messages per reason, and deciding which ones to log (pure).

Whatever arrives from the network is counted; only some of it is logged, so that an
attacker flooding a topic with forgeries fills a counter, not the disk: the first
``first`` of each reason, then every ``every``-th.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["RejectionTally"]


class RejectionTally:
    """Counts per reason; :meth:`add` says whether this occurrence should be logged."""

    def __init__(self, *, first: int = 10, every: int = 1000) -> None:
        if first < 0 or every < 1:
            raise ValueError("first must be >= 0 and every >= 1")
        self.first = first
        self.every = every
        self.counts: Counter[str] = Counter()

    def add(self, reason: str) -> bool:
        """Count one ``reason``; True for the first ``first`` and every ``every``-th."""
        self.counts[reason] += 1
        n = self.counts[reason]
        return n <= self.first or n % self.every == 0

    @property
    def total(self) -> int:
        """Everything counted, all reasons together."""
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        """A snapshot: reason -> count."""
        return dict(self.counts)
