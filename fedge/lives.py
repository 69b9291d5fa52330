"""Maintenance events and the lives they cut a machine's history into (pure).

A real machine is not a run-to-failure "unit": it runs, someone repairs or replaces
a part, it runs again, and most machines have never failed. What we know is the
machine's readings (timestamps) and the maintenance events someone recorded
(:class:`MaintenanceEvent`, also the payload of ``devices/<device>/events``).
:func:`split_lives` turns the two into :class:`Life` values, and :func:`rul_labels`
/ :func:`horizon_labels` label the readings of a life.

Lives
    Events are deduplicated by ``event_id`` and sorted by ``(ts, kind, event_id)``
    with ``failure < replace < repair`` at equal timestamps, so the result does
    not depend on the order events arrived in. An event at ``ts`` closes the life
    it falls in: a reading at exactly ``ts`` belongs to the closed life (the
    failure cycle is the life's last reading, as in C-MAPSS), a reading after
    ``ts`` to the next one. Only lives with readings are kept, plus the current
    one, so:

    * **several events with no reading between them** are one boundary. The first
      one ends the life and gives its ``end_kind``; the others (``Life.events[1:]``)
      happened while the machine produced nothing. "failure then repair" is the
      common case (it failed, was repaired, runs again: the life *failed*); "two
      failures in a row" is the same failure reported twice; "repair then failure"
      ends the life by repair (censored) and the failure belongs to a stretch
      with no readings, which labels nothing.
    * **events before the first reading** close no life; the first life starts
      after the last of them.
    * **the last life** is the current one (``end_kind is None``) unless the last
      event came after the last reading, in which case a current life with no
      readings yet follows it. Only the current life can be empty.
    * **the same ``event_id`` twice** is one event (storage and MQTT delivery are
      at-least-once); the same id with different contents is an :class:`EventError`.

Labels and censoring
    Only a life that ended in **failure** has remaining-useful-life labels. A life
    closed by a **repair or replace** is *right-censored*: the machine had not
    failed when it was serviced, so we know only a lower bound on its RUL at each
    reading (``RUL > time until the repair``). Using "time until repair" as if it
    were RUL would teach the model that the healthy machines people maintain on
    schedule are about to fail, so :func:`rul_labels` refuses censored lives
    (:class:`EventError`). A censored life is still normal behaviour and feeds
    the health score's baseline (:mod:`fedge.health`), and it does give certain
    *negatives* for the failure-within-horizon head: a reading more than
    ``horizon`` before the censoring time certainly had ``RUL > horizon``.
    :func:`horizon_labels` implements that (readings closer to the censoring time
    are marked unknown). The **current** life has no labels of either kind: it is
    not over, and the horizon negatives it could give are left out on purpose until
    the training side decides how to weigh a life still in progress.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, StringConstraints

from fedge.errors import DataError, EventError
from fedge.messages import Identifier, Timestamp, WireModel

__all__ = [
    "EventKind",
    "EventSource",
    "HorizonLabels",
    "Life",
    "MaintenanceEvent",
    "horizon_labels",
    "life_of",
    "rul_labels",
    "split_lives",
]

EventKind = Literal["failure", "repair", "replace"]
EventSource = Literal["cli", "operator", "simulator"]
# A uuid4 in lowercase hex: version nibble 4, variant nibble 8-b.
EventId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$")]
# At equal timestamps a failure comes first: "failed, then repaired" is one boundary.
_KIND_ORDER: dict[str, int] = {"failure": 0, "replace": 1, "repair": 2}


class MaintenanceEvent(WireModel):
    """Something done to (or happening to) one machine, at one time.

    ``event_id`` is set once by whoever creates the event (:meth:`new`), so that
    storing or receiving it twice is harmless.
    """

    fleet: Identifier
    device: Identifier
    kind: EventKind
    ts: Timestamp
    note: str = Field(default="", max_length=500)
    event_id: EventId
    source: EventSource

    @classmethod
    def new(
        cls,
        *,
        fleet: str,
        device: str,
        kind: EventKind,
        ts: float,
        source: EventSource,
        note: str = "",
    ) -> MaintenanceEvent:
        """A new event with a fresh random ``event_id``."""
        return cls(
            fleet=fleet,
            device=device,
            kind=kind,
            ts=ts,
            note=note,
            event_id=uuid.uuid4().hex,
            source=source,
        )


@dataclass(frozen=True, slots=True)
class Life:
    """One stretch of a machine's history between maintenance boundaries.

    ``first`` and ``n_readings`` locate the life's readings in the (sorted)
    timestamp array given to :func:`split_lives`. ``start_ts`` is when the life
    began: the last event of the boundary before it, or its first reading for a
    life with no event before it (``opened_by is None``). ``end_ts`` is the time
    of the event that closed it (``None`` while running). A reading at ``ts``
    belongs to the life when ``start_ts < ts <= end_ts`` (the lower bound is
    inclusive and open-ended for the first life). ``events`` are the ids of the
    events of the closing boundary, the first of which gave ``end_kind``.
    """

    index: int
    start_ts: float
    end_ts: float | None
    end_kind: EventKind | None
    first: int
    n_readings: int
    opened_by: str | None = None
    events: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """The life ended in a failure: its readings have RUL labels."""
        return self.end_kind == "failure"

    @property
    def censored(self) -> bool:
        """The life was closed by a repair or replacement before any failure."""
        return self.end_kind in ("repair", "replace")

    @property
    def running(self) -> bool:
        """The current life: not closed yet, no labels."""
        return self.end_kind is None

    @property
    def readings(self) -> slice:
        """This life's rows in the sorted reading array."""
        return slice(self.first, self.first + self.n_readings)

    def contains(self, ts: float) -> bool:
        """Whether a reading at ``ts`` belongs to this life (see the class docstring)."""
        after_start = self.opened_by is None or ts > self.start_ts
        return after_start and (self.end_ts is None or ts <= self.end_ts)


def _check_times(reading_ts: npt.ArrayLike) -> npt.NDArray[np.float64]:
    ts = np.asarray(reading_ts, dtype=np.float64)
    if ts.ndim != 1:
        raise DataError(f"reading timestamps must be 1-D, got shape {ts.shape}")
    if not np.all(np.isfinite(ts)):
        raise DataError("reading timestamps must be finite")
    if ts.shape[0] > 1 and np.any(np.diff(ts) < 0):
        raise DataError("reading timestamps must be in non-decreasing order")
    return ts


def _dedupe(events: Sequence[MaintenanceEvent]) -> list[MaintenanceEvent]:
    by_id: dict[str, MaintenanceEvent] = {}
    machine: tuple[str, str] | None = None
    for event in events:
        if machine is None:
            machine = (event.fleet, event.device)
        elif (event.fleet, event.device) != machine:
            raise EventError(
                f"events of {event.fleet}/{event.device} mixed with {machine[0]}/{machine[1]}"
            )
        seen = by_id.get(event.event_id)
        if seen is None:
            by_id[event.event_id] = event
        elif seen != event:
            raise EventError(f"event id {event.event_id} used for two different events")
    return sorted(by_id.values(), key=lambda e: (e.ts, _KIND_ORDER[e.kind], e.event_id))


def split_lives(reading_ts: npt.ArrayLike, events: Sequence[MaintenanceEvent]) -> list[Life]:
    """Cut one machine's readings into lives at its maintenance events.

    ``reading_ts`` are unix seconds in non-decreasing order; ``events`` come in
    any order, possibly repeated. Every reading ends up in exactly one life; lives
    come back in time order and do not overlap. See the module docstring for the
    rules. No readings and no events give no lives.
    """
    ts = _check_times(reading_ts)
    ordered = _dedupe(events)
    # Readings up to and including each event's time: the event closes them.
    cut = np.searchsorted(ts, [e.ts for e in ordered], side="right").tolist()
    lives: list[Life] = []
    done = 0  # readings already placed in a life
    opened: MaintenanceEvent | None = None  # last event of the previous boundary
    i = 0
    while i < len(ordered):
        # One boundary: this event and the following ones with no reading between.
        j = i
        while j + 1 < len(ordered) and cut[j + 1] == cut[i]:
            j += 1
        if cut[i] > done:
            closing = ordered[i]
            lives.append(
                Life(
                    index=len(lives),
                    start_ts=float(ts[done]) if opened is None else opened.ts,
                    end_ts=closing.ts,
                    end_kind=closing.kind,
                    first=done,
                    n_readings=cut[i] - done,
                    opened_by=None if opened is None else opened.event_id,
                    events=tuple(e.event_id for e in ordered[i : j + 1]),
                )
            )
            done = cut[i]
        # Events before the first reading, or right after a boundary, only move the start.
        opened = ordered[j]
        i = j + 1
    if done < ts.shape[0] or opened is not None:
        start = float(ts[done]) if opened is None else opened.ts
        lives.append(
            Life(
                index=len(lives),
                start_ts=start,
                end_ts=None,
                end_kind=None,
                first=done,
                n_readings=int(ts.shape[0]) - done,
                opened_by=None if opened is None else opened.event_id,
            )
        )
    return lives


def life_of(lives: Sequence[Life], ts: float) -> Life | None:
    """The life a reading at ``ts`` belongs to, or None.

    None when ``ts`` falls inside a boundary (after a failure and before the repair
    that followed it, when the machine produced no readings) or there are no lives.
    """
    for life in lives:
        if life.contains(ts):
            return life
    return None


def _distance_to_end(
    life: Life, times: npt.ArrayLike, unit: Literal["cycles", "hours"]
) -> npt.NDArray[np.float64]:
    """Per reading: cycles (or hours) until the end of ``life``."""
    t = np.asarray(times, dtype=np.float64)
    if t.shape != (life.n_readings,):
        raise DataError(
            f"life {life.index} has {life.n_readings} readings, got times of shape {t.shape}"
        )
    if not np.all(np.isfinite(t)):
        raise DataError("reading times must be finite")
    if t.shape[0] > 1 and np.any(np.diff(t) < 0):
        raise DataError("reading times must be in non-decreasing order")
    if unit == "cycles":
        # The life ends at its last cycle (RUL 0 there), as in C-MAPSS and the agent's
        # run-to-failure units: a cycle counter says nothing about the event's clock time.
        return t[-1] - t if t.shape[0] else t
    if unit == "hours":
        if life.end_ts is None:
            raise EventError(f"life {life.index} is still running")
        if t.shape[0] and t[-1] > life.end_ts:
            raise DataError(f"readings after the end of life {life.index}")
        return (life.end_ts - t) / 3600.0
    raise DataError(f"unit must be 'cycles' or 'hours', got {unit!r}")


def rul_labels(
    life: Life,
    times: npt.ArrayLike,
    *,
    unit: Literal["cycles", "hours"],
    cap: float = math.inf,
) -> npt.NDArray[np.float32]:
    """Remaining useful life of each reading of a life that ended in failure.

    ``times`` are the life's readings as cycle numbers (``unit="cycles"``: RUL is
    counted to the life's last cycle) or unix seconds (``unit="hours"``: RUL in
    hours to the failure event), one per reading. Labels are capped at ``cap``.
    A censored or running life raises :class:`EventError` (see the module docstring).
    """
    if not life.failed:
        state = "still running" if life.running else f"censored by a {life.end_kind}"
        raise EventError(f"life {life.index} is {state}: it has no RUL labels")
    if not cap > 0:
        raise DataError(f"cap must be > 0, got {cap}")
    out: npt.NDArray[np.float32] = np.minimum(_distance_to_end(life, times, unit), cap).astype(
        np.float32
    )
    return out


@dataclass(frozen=True, eq=False, slots=True)
class HorizonLabels:
    """Failure-within-horizon labels: ``target`` (1 = fails within the horizon) where ``known``."""

    target: npt.NDArray[np.float32]
    known: npt.NDArray[np.bool_]


def horizon_labels(
    life: Life,
    times: npt.ArrayLike,
    *,
    unit: Literal["cycles", "hours"],
    horizon: float,
) -> HorizonLabels:
    """Labels for the failure-within-``horizon`` head (``horizon`` in ``unit``).

    A failed life labels every reading: positive when its RUL is ``<= horizon``
    (the rule the training loss uses). A censored life gives only negatives, for
    readings *more than* ``horizon`` before its end (their RUL certainly exceeds
    the horizon); the rest are unknown. A running life raises :class:`EventError`.
    """
    if life.running:
        raise EventError(f"life {life.index} is still running: it has no labels")
    if not horizon > 0:
        raise DataError(f"horizon must be > 0, got {horizon}")
    distance = _distance_to_end(life, times, unit)
    if life.failed:
        known = np.ones(distance.shape, dtype=np.bool_)
        target = (distance <= horizon).astype(np.float32)
    else:
        known = distance > horizon
        target = np.zeros(distance.shape, dtype=np.float32)
    return HorizonLabels(target=target, known=known)
