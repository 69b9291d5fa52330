"""When the agent may forget a telemetry reading: ingest's stored-up-to confirmations (pure).

The broker's PUBACK only says the broker has a reading, in memory: Mosquitto killed
before its next snapshot forgets what it acknowledged in the last ~2 s. Ingest
(``fedge ingest --stored-acks``) publishes, retained on ``devices/<device>/stored``,
how far each device's readings are durably stored (:class:`~fedge.messages.StoredAck`).
An agent in *confirm mode* keeps every reading the broker acknowledged as SENT
(:mod:`edge_agent.store_telemetry`) until a watermark covers it, and sends the
uncovered ones again when they may have been lost.

:class:`TelemetryConfirm` makes those decisions without I/O: events go in (an ack,
the transport's reconnect counter, a tick with the time and the number of
unconfirmed readings), decisions come out (the watermark to apply, whether to
re-send now). The agent does the store and network work.

Modes (``AgentConfig.telemetry_confirm``): ``off`` is the agent from before
confirmations (a PUBACK makes a reading STORED; the agent does not subscribe);
``on`` is confirm mode from the start; ``auto`` (default) switches confirm mode on
with the first valid ack (the retained ack comes at every connect, so a fleet whose
ingest confirms is in confirm mode a moment after each start) and stays there.
Readings acknowledged by the broker before that wait as SENT for the first ack.

Acks (:meth:`TelemetryConfirm.on_ack`): one naming another fleet or device is refused
(``stored_ack_mismatch``). A watermark ``(through_seq, through_ts)`` is refused as
``stored_ack_backwards`` when it is behind the last one in both parts and not the
same (a stale retained ack, e.g. from a broker that came back from an older snapshot).
The same watermark again is a repeat: nothing to apply, not an error. Anything else
moves: a higher seq, or a lower seq with a *later* time (ingest followed a restarted
counter; see :class:`~fedge.messages.StoredAck`).

Re-sends (:meth:`TelemetryConfirm.tick`), only in confirm mode:

* *after a connection*: the first one and every reconnect (the broker may have
  died: a reconnect is all the agent sees of that). What was unconfirmed when the
  connection changed (up to the newest seq the broker had acknowledged then) goes
  again, once the retained ack that follows the subscription has come (what it
  covers is not sent again), or ``settle_s`` after the change without one (an
  ingest with no watermark for the device publishes one at the first batch it sees,
  just below what the batch says the agent owes: that ack ends the wait too).
  Readings acknowledged on the new connection are not re-sent.
* *on timeout*: readings have been unconfirmed for ``timeout_s`` and the watermark
  did not move meanwhile (a gap at ingest that only a re-send fills: a message lost
  without a reconnect). Each timeout re-send without progress doubles the next wait,
  up to ``MAX_BACKOFF`` times ``timeout_s``, so an ingest that is down for hours
  is not flooded; any progress resets it.

Ingest signs nothing, so acks are not verified even in security mode ``verify``: the
broker's ACL (only the ingest identity may publish ``devices/+/stored``; see
:func:`broker.rendering.render_acl`) is what vouches for them. A forged ack can make
an agent forget readings as telemetry, never lose them as training history.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from fedge.errors import RefusalReason, RefusedError
from fedge.messages import StoredAck

__all__ = [
    "MAX_BACKOFF",
    "ConfirmMode",
    "Resend",
    "ResendOrder",
    "TelemetryConfirm",
    "Watermark",
]

ConfirmMode = Literal["auto", "on", "off"]
MAX_BACKOFF = 16
"""The longest wait between timeout re-sends without progress, in ``timeout_s``."""


@dataclass(frozen=True, slots=True)
class Watermark:
    """Every reading with ``seq <= through_seq`` and ``ts <= through_ts`` is stored."""

    through_seq: int
    through_ts: float


class Resend(StrEnum):
    """Why :meth:`TelemetryConfirm.tick` says to re-send unconfirmed readings now."""

    CONNECTED = "connected"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class ResendOrder:
    """Re-send the unconfirmed (SENT) readings with ``seq <= through_seq`` (None: all)."""

    reason: Resend
    through_seq: int | None = None


class TelemetryConfirm:
    """The confirmation state of one device's telemetry. Not thread-safe: the agent
    thread owns it. Times are seconds on any clock that does not go back."""

    def __init__(
        self,
        *,
        fleet: str,
        device: str,
        mode: ConfirmMode = "auto",
        timeout_s: float = 30.0,
        settle_s: float = 2.0,
        watermark: Watermark | None = None,
    ) -> None:
        if timeout_s <= 0 or settle_s < 0:
            raise ValueError("timeout_s must be positive and settle_s not negative")
        self.fleet, self.device, self.mode = fleet, device, mode
        self.timeout_s, self.settle_s = timeout_s, settle_s
        self.watermark = watermark
        """The last watermark accepted (or the one the store kept from before)."""
        # In auto mode a watermark kept from an earlier run means ingest confirmed
        # this store's readings before: confirm from the start, as after an ack.
        self.active = mode == "on" or (mode == "auto" and watermark is not None)
        self.acks = 0
        """Acks that moved the watermark."""
        self._seen_reconnects: int | None = None
        self._connected_at: float | None = None
        self._sent_through: int | None = None
        self._acked_since_connect = False
        self._progress_at: float | None = None
        self._unconfirmed_since: float | None = None
        self._backoff = 1

    @property
    def subscribes(self) -> bool:
        """Whether the agent listens for acks at all (not in mode ``off``)."""
        return self.mode != "off"

    @property
    def next_timeout_s(self) -> float:
        """How long readings may stay unconfirmed, without progress, before a re-send."""
        return self.timeout_s * self._backoff

    def on_ack(self, ack: StoredAck, *, now: float) -> Watermark | None:
        """An ack from the device's ``stored`` topic: the watermark to apply to the store,
        or None for a repeat (or in mode ``off``). Raises RefusedError (see module docs).

        Every ack for this device, even a refused backwards one, shows the subscription
        is live again after a (re)connect: the re-send it waited for may go.
        """
        if ack.fleet != self.fleet or ack.device != self.device:
            raise RefusedError(
                RefusalReason.STORED_ACK_MISMATCH,
                f"stored ack for {ack.fleet}/{ack.device} on the topic of "
                f"{self.fleet}/{self.device}",
            )
        if self.mode == "off":
            return None
        self._acked_since_connect = True
        mark = Watermark(ack.through_seq, ack.through_ts)
        last = self.watermark
        if last is not None:
            if mark == last:
                return None
            if mark.through_seq <= last.through_seq and mark.through_ts <= last.through_ts:
                raise RefusedError(
                    RefusalReason.STORED_ACK_BACKWARDS,
                    f"stored through seq {mark.through_seq} (ts {mark.through_ts:.3f}) is "
                    f"behind seq {last.through_seq} (ts {last.through_ts:.3f})",
                )
        self.active = True
        self.watermark = mark
        self.acks += 1
        self._progress(now)
        return mark

    def new_connection(self, reconnects: int) -> bool:
        """Whether the transport's reconnect counter shows a connection not seen yet (its
        first value counts: the first connection after a start)."""
        return reconnects != self._seen_reconnects

    def on_connection(self, reconnects: int, *, now: float, sent_through: int | None) -> None:
        """A new connection (:meth:`new_connection`): ``sent_through`` is the newest seq
        the broker had acknowledged that is still unconfirmed (None: none), what the
        re-send after it covers."""
        self._seen_reconnects = reconnects
        self._connected_at = now
        self._sent_through = sent_through
        self._acked_since_connect = False

    def tick(self, *, now: float, unconfirmed: int) -> ResendOrder | None:
        """What to re-send now, if anything (the caller does it); ``unconfirmed`` is the
        number of SENT readings."""
        if not self.active:
            return None
        if self._connected_at is not None:
            if not self._acked_since_connect and now - self._connected_at < self.settle_s:
                return None  # the retained ack may still come: it spares re-sends
            self._connected_at = None
            if not unconfirmed or self._sent_through is None:
                return None
            self._progress_at = now  # the re-sent readings get a full timeout
            return ResendOrder(Resend.CONNECTED, self._sent_through)
        if unconfirmed == 0:
            self._unconfirmed_since = None
            return None
        if self._unconfirmed_since is None:
            self._unconfirmed_since = now
        since = max(self._unconfirmed_since, self._progress_at or self._unconfirmed_since)
        if now - since < self.next_timeout_s:
            return None
        self._backoff = min(2 * self._backoff, MAX_BACKOFF)
        self._progress_at = now
        return ResendOrder(Resend.TIMEOUT)

    def _progress(self, now: float) -> None:
        self._progress_at = now
        self._backoff = 1
