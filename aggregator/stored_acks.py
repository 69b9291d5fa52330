"""Stored-up-to watermarks: how far each device's telemetry is durably stored (pure).

The broker's PUBACK to an agent only says the broker has a reading, in memory:
a broker killed before its next autosave forgets it. What an agent needs before
it may forget a reading is ingest's word that the reading is *stored*. Ingest
therefore keeps, per device, the watermark ``through_seq``: every seq up to it
has been written durably (or deliberately refused, or is not owed: see below),
and publishes it retained on ``devices/<device>/stored``
(:class:`~fedge.messages.StoredAck`). An agent that keeps readings until they are
covered, and re-sends the uncovered ones after a reconnect, then loses nothing even
to a broker kill -9.

Where a watermark starts is the crux. An ingest that seeds from its own retained
ack knows; a *fresh* one (first deployment, or the retained ack died with a broker
that had not saved it, and ingest restarted too) does not, and the first reading it
sees need not be the lowest one the agent still holds: after a reconnect an agent
sends its newest readings while it waits for the ack that decides its re-send.
Starting "just below the first reading seen" then vouches for readings ingest never
stored, and the agent forgets them (issue 12). So the agent says what it owes: each
batch carries ``unconfirmed_from`` (:attr:`~fedge.messages.TelemetryBatch.unconfirmed_from_seq`
and its device time), the lowest seq the agent holds that no ack covers yet, unsent
or sent. It is provably a safe place for a watermark: the agent's unconfirmed seqs
only ever gain higher seqs (new readings) or leave (covered by an ack, pruned), so
it never again holds an unconfirmed reading of this counter below ``unconfirmed_from``,
and a watermark just below it covers nothing the agent still needs. A batch that
comes late (a redelivery) carries an older, lower word: more cautious, never wrong.
Above the word the watermark moves only as ingest stores readings, on a later word,
or when a gap times out (the documented loss of readings an agent evicted).

Rules (:class:`StoredWatermarks`), per batch ``stored(device, readings, unconfirmed_from=...)``:

* *The agent's word first* (a batch with ``unconfirmed_from = (u, t)``):

  - a device without a watermark (not seeded, never seen) starts at ``u - 1``, and
    that start is published at once: the agent learns that ingest listens, which
    ends the wait before its re-send (:mod:`edge_agent.telemetry_confirm`);
  - a watermark below ``u - 1`` moves up to ``u - 1`` if ``t`` is not earlier than
    the watermark's time: the seqs between are not owed (confirmed by an earlier
    ingest, whose retained ack this one did not get or got stale; pruned by the
    agent's size bound; or lost in ``off`` mode). They are counted in
    :attr:`StoredWatermarks.waived`, and waiting readings below are taken in. (A
    higher ``u`` at an earlier time comes from an older counter, a late
    redelivery, and is ignored.)
  - ``u`` at or below the watermark with a *later* time than the watermark's is a
    restarted counter: the watermark restarts at ``u - 1``;
  - otherwise (``u`` at or below the watermark, same counter) nothing changes: an
    agent can lag behind what ingest has stored, never lead it.

  The time of such a start is ``t``, the time of the reading just above it: with
  device time rising with seq (what the counter-restart rule assumes anyway) it
  bounds every reading at or below the start, which is what the restart rule and
  the agent's cover (``seq <= through_seq and ts <= through_ts``) need.
* *Without the field* (agents from before it), the old rule: the first reading seen
  of a device starts its watermark just below it. That is only safe if the first
  reading seen is the lowest one the agent holds unconfirmed, which a fresh ingest
  cannot know; those agents keep the risk until they are upgraded.
* Then each reading: a seq at or below the watermark is a re-send, unless its device
  time is *later* than the watermark's: then the agent's counter restarted and the
  watermark restarts with it (at the reading, without the agent's word).
* Seqs above ``watermark + 1`` wait in a bounded set until the gap below them is
  filled. A gap open for ``gap_timeout_s``, or more than ``max_pending`` waiting
  seqs, is given up (counted in :attr:`StoredWatermarks.gaps_skipped`): the
  readings in it are gone for good (an agent evicted them), and waiting longer
  would keep the agent from ever pruning.
* A watermark below 0 (an agent that owes its seq 0) is kept but not published: an
  ack cannot say "nothing yet".
* At most ``max_devices`` devices are tracked (least recently seen forgotten).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["StoredWatermarks", "Watermark"]


@dataclass(frozen=True, slots=True)
class Watermark:
    """Every reading up to ``through_seq`` is stored (or not owed); ``through_ts`` is the
    device time of the reading at ``through_seq``, or of the one above it for a
    watermark that started from the agent's word (a bound on theirs, either way)."""

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
        self.waived = 0
        """Seqs the watermark passed on the agent's word that this ingest never stored."""

    def get(self, device: str) -> Watermark | None:
        """The device's watermark, or None before its first reading."""
        mark = self._marks.get(device)
        return None if mark is None else Watermark(mark.through, mark.through_ts)

    def seed(self, device: str, watermark: Watermark) -> None:
        """Start from a watermark published earlier (ignored once the device is tracked)."""
        if device not in self._marks:
            self._track(device, _Mark(watermark.through_seq, watermark.through_ts))

    def stored(
        self,
        device: str,
        readings: Iterable[tuple[int, float]],
        *,
        now: float,
        unconfirmed_from: tuple[int, float] | None = None,
    ) -> None:
        """Record readings ``(seq, ts)`` of ``device`` as durably dealt with at ``now``.

        ``unconfirmed_from`` is the batch's ``(unconfirmed_from_seq, unconfirmed_from_ts)``
        (None for batches from agents without the field); see the module docs.
        """
        mark = self._marks.get(device)
        if unconfirmed_from is not None:
            mark = self._owed_from(device, mark, *unconfirmed_from, now=now)
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
            if mark is not None and mark.through >= 0:
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
    def _owed_from(
        self, device: str, mark: _Mark | None, seq: int, ts: float, *, now: float
    ) -> _Mark:
        """Apply the agent's word: it owes nothing of this counter below ``seq``."""
        start = seq - 1
        if mark is None:
            self._changed.add(device)
            return self._track(device, _Mark(start, ts))
        if seq <= mark.through:
            if ts > mark.through_ts:
                # Owed from below the watermark, but later: the agent's counter restarted.
                self.resets += 1
                self._changed.add(device)
                return self._track(device, _Mark(start, ts))
            return mark  # the agent lags behind what is stored here: nothing to learn
        if start > mark.through and ts >= mark.through_ts:
            # Not owed, so not coming: what waits below the start is taken in, the rest
            # is waived (stored by an earlier ingest, pruned, or lost in "off" mode).
            # (A higher seq at an *earlier* time is the word of an older counter, a
            # late redelivery: it says nothing about this one.)
            taken = [mark.above.pop(s) for s in [s for s in mark.above if s <= start]]
            self.waived += start - mark.through - len(taken)
            mark.through, mark.through_ts = start, max(mark.through_ts, ts, *taken)
            self._close_gap(mark, now)
            self._changed.add(device)
        return mark

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
