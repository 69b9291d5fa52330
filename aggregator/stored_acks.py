"""Stored-up-to watermarks: how far each device's telemetry is durably stored (pure).

The broker's PUBACK to an agent only says the broker has a reading, in memory:
a broker killed before its next autosave forgets it. What an agent needs before
it may forget a reading is ingest's word that the reading is *stored*. Ingest
therefore keeps, per device, the watermark ``through_seq``: every seq up to it
has been written durably (or deliberately refused), and publishes it retained on
``devices/<device>/stored`` (:class:`~fedge.messages.StoredAck`). An agent that
keeps readings until they are covered, and re-sends the uncovered ones after a
reconnect, then loses nothing even to a broker kill -9.

Rules (:class:`StoredWatermarks`):

* The first reading seen of a device starts its watermark just below it: ingest
  cannot know about readings before its time (an agent re-sends from its own
  last confirmation, so what comes first is what it still holds).
* A seq at or below the watermark is a re-send, unless its device time is *later*
  than the watermark's: then the agent's counter restarted and the watermark
  restarts with it.
* Seqs above ``watermark + 1`` wait in a bounded set until the gap below them is
  filled. A gap open for ``gap_timeout_s``, or more than ``max_pending`` waiting
  seqs, is given up (counted in :attr:`StoredWatermarks.gaps_skipped`): the
  readings in it are gone for good (an agent evicted them), and waiting longer
  would keep the agent from ever pruning.
* At most ``max_devices`` devices are tracked (least recently seen forgotten).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["StoredWatermarks", "Watermark"]


@dataclass(frozen=True, slots=True)
class Watermark:
    """Every reading up to ``through_seq`` is stored; that one has device time ``through_ts``."""

    through_seq: int
    through_ts: float


@dataclass(slots=True)
class _Mark:
    through: int
    through_ts: float
    above: dict[int, float] = field(default_factory=dict)
    gap_since: float | None = None


class StoredWatermarks:
    """Per-device stored-up-to watermarks. Not thread-safe: one ingest worker owns it."""

    def __init__(
        self,
        *,
        max_pending: int = 100_000,
        gap_timeout_s: float = 600.0,
        max_devices: int = 100_000,
    ) -> None:
        if max_pending < 1 or gap_timeout_s <= 0 or max_devices < 1:
            raise ValueError("max_pending, gap_timeout_s and max_devices must be positive")
        self.max_pending = max_pending
        self.gap_timeout_s = gap_timeout_s
        self.max_devices = max_devices
        self._marks: OrderedDict[str, _Mark] = OrderedDict()
        self._changed: set[str] = set()
        self.gaps_skipped = 0
        self.resets = 0

    def get(self, device: str) -> Watermark | None:
        """The device's watermark, or None before its first reading."""
        mark = self._marks.get(device)
        return None if mark is None else Watermark(mark.through, mark.through_ts)

    def seed(self, device: str, watermark: Watermark) -> None:
        """Start from a watermark published earlier (ignored once the device is tracked)."""
        if device not in self._marks:
            self._track(device, _Mark(watermark.through_seq, watermark.through_ts))

    def stored(self, device: str, readings: Iterable[tuple[int, float]], *, now: float) -> None:
        """Record readings ``(seq, ts)`` of ``device`` as durably dealt with at ``now``."""
        mark = self._marks.get(device)
        for seq, ts in readings:
            if mark is None:
                mark = self._track(device, _Mark(seq - 1, ts))
            if seq <= mark.through:
                if ts > mark.through_ts:
                    # Same or lower seq, later device time: the agent's counter restarted.
                    self.resets += 1
                    mark = self._track(device, _Mark(seq, ts))
                    self._changed.add(device)
                continue
            if seq == mark.through + 1:
                mark.through, mark.through_ts = seq, ts
                self._close_gap(mark, now)
                self._changed.add(device)
                continue
            mark.above[seq] = ts
            if mark.gap_since is None:
                mark.gap_since = now
            if len(mark.above) > self.max_pending:
                self._skip_gap(mark, now)
                self._changed.add(device)
        if mark is not None:
            self._marks.move_to_end(device)

    def expire(self, *, now: float) -> None:
        """Give up every gap open for longer than ``gap_timeout_s``."""
        for device, mark in self._marks.items():
            while mark.gap_since is not None and now - mark.gap_since >= self.gap_timeout_s:
                self._skip_gap(mark, now)
                self._changed.add(device)

    def take_changed(self) -> dict[str, Watermark]:
        """The watermarks that moved since the last call (to publish), then forget that."""
        out = {}
        for device in sorted(self._changed):
            mark = self._marks.get(device)
            if mark is not None:
                out[device] = Watermark(mark.through, mark.through_ts)
        self._changed.clear()
        return out

    def pending(self, device: str) -> int:
        """How many stored seqs of ``device`` wait above a gap."""
        mark = self._marks.get(device)
        return 0 if mark is None else len(mark.above)

    @property
    def devices(self) -> list[str]:
        """Tracked devices, least recently seen first."""
        return list(self._marks)

    # Internals -------------------------------------------------------------------------
    def _track(self, device: str, mark: _Mark) -> _Mark:
        self._marks[device] = mark
        self._marks.move_to_end(device)
        while len(self._marks) > self.max_devices:
            forgotten, _ = self._marks.popitem(last=False)
            self._changed.discard(forgotten)
        return mark

    @staticmethod
    def _close_gap(mark: _Mark, now: float) -> None:
        above = mark.above
        while (nxt := mark.through + 1) in above:
            mark.through, mark.through_ts = nxt, above.pop(nxt)
        # What still waits is behind a new gap: its clock starts now.
        mark.gap_since = now if above else None

    def _skip_gap(self, mark: _Mark, now: float) -> None:
        lowest = min(mark.above)
        self.gaps_skipped += lowest - mark.through - 1
        mark.through, mark.through_ts = lowest, mark.above.pop(lowest)
        self._close_gap(mark, now)
