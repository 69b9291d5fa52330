"""Maintenance in the agent: events in, the machine's history cut into lives, labels out.

:class:`Maintenance` is the agent's bookkeeping of one machine's lives
(:mod:`fedge.lives` has the rules; this module applies them to the store):

* **Events in.** Maintenance events reach the store from three places: the agent's
  own source (a simulated or replayed unit that ran to failure becomes a ``failure``
  event, source ``simulator``, followed by the technician's ``repair``), the CLI
  (``fedge agent event`` writes into the store of the running agent from another
  process) and operator tools over MQTT (``devices/<device>/events``). They are stored
  once per ``event_id``; the agent polls the table for rows it has not seen
  (:meth:`poll`, a primary-key range read every step), and publishes the ones that
  did not come from the broker at QoS 1, unsent until the broker acknowledged them.
* **Lives.** The readings' ``unit`` is the life they belong to. An event at ``ts``
  closes the life running at ``ts`` once the clock has passed ``ts`` (a reading at
  exactly ``ts`` still belongs to it, as :func:`fedge.lives.split_lives` says); the
  next reading starts the next life. Every cut is made by ``split_lives`` itself over
  the last lives' readings and events (:meth:`_recut`), so an event recorded late
  ("it failed at 10:00", entered at 14:00) moves the readings after 10:00 into a new
  life, with their cycles counted from 0, in one transaction.
* **Labels out.** Only lives that ended in failure label their readings with RUL
  (:func:`fedge.lives.rul_labels`, in cycles or operating hours:
  ``AgentConfig.rul_unit``); lives closed by a repair or replacement are
  right-censored and give no RUL target. (The failure-within-horizon head is trained
  from the RUL labels of failed lives only: the censored lives' certain negatives,
  :func:`fedge.lives.horizon_labels`, are not used yet.)
* **Health.** The current life has a :class:`edge_agent.life_watch.LifeWatch`: its
  health monitor (baseline from the life's first readings), the RUL alert's
  persistence and the alert log, persisted in the store so a restart carries on.
  When a life closes its alerts are scored (:class:`LifeOutcome`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.life_watch import LifeOutcome, LifeWatch
from edge_agent.maintenance_store import EventRecord, LifeRow, MaintenanceStore
from edge_agent.sources.base import SensorSample
from edge_agent.store import ReadingStore, UnitData
from fedge.config import AgentConfig
from fedge.data.simulator import UnitRun
from fedge.errors import DataError, EventError, MessageError, StorageError, TransportError
from fedge.lives import EventKind, EventSource, MaintenanceEvent, rul_labels, split_lives
from fedge.messages import decode_message, encode_message
from fedge.topics import Topics
from fedge.transport import PublishHandle, Transport

__all__ = ["LifeOutcome", "Maintenance", "MaintenanceStats", "Placement"]

log = logging.getLogger(__name__)

_HISTORY_CYCLE_S = 60.0  # history logged before the agent ran: one cycle a minute
_MIN_STEP_S = 1e-6  # readings get strictly increasing times (see _reading_ts)
_SAVE_EVERY = 50  # readings between saves of the life watch (a restart replays the rest)
_MAX_INFLIGHT = 50
_POLL_LIMIT = 1000  # events read per poll


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a reading was stored: its life (``unit``), cycle in the life, time, seq."""

    unit: int
    cycle: int
    ts: float
    seq: int


@dataclass
class MaintenanceStats:
    """Counters for the operator."""

    events_received: int = 0
    events_rejected: int = 0
    events_published: int = 0
    lives_closed: int = 0
    recuts: int = 0


class Maintenance:
    """Events, lives and the health watch of one agent's machine (see the module doc)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        store: ReadingStore,
        sensor_names: Sequence[str],
        transport: Transport,
        clock: Callable[[], float] = time.time,
        on_outcome: Callable[[LifeOutcome], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.events = MaintenanceStore(store.db, path=store.path)
        self.events.set_identity(config.fleet, config.device)
        self.sensor_names = tuple(sensor_names)
        self.transport = transport
        self.topic = Topics(config.fleet).events(config.device)
        self.clock = clock
        self.on_outcome = on_outcome
        self.outcomes: list[LifeOutcome] = []
        self.stats = MaintenanceStats()
        # Bumped whenever lives change (re-cut, or the first life opened); only this
        # object writes lives, so it invalidates everything derived from them: the
        # agent's datasets and failed_units() below.
        self.revision = 0
        self._failed_units: tuple[int, tuple[int, ...]] | None = None  # (revision, units)
        self._seen = 0
        self._polled: tuple[int, int] | None = None  # events_marker() when last read to the end
        self._pending: list[EventRecord] = []
        self._inflight: list[tuple[PublishHandle, list[int]]] = []
        self._source_unit: int | None = None
        self._source_failed = False
        self._since_save = 0
        self._health_error: str | None = None
        self.poll(-math.inf)  # load what is stored: pending events, nothing applied yet
        self._current = self._load_current()
        self._last_ts = self._current_last_ts()
        self._next_cycle = self._count_cycle()
        self.watch = self._open_watch(self._current)

    # The current life -------------------------------------------------------------
    @property
    def current_unit(self) -> int | None:
        """The running life's unit number (None before the first reading or event)."""
        return None if self._current is None else self._current.unit

    def has_lives(self) -> bool:
        """Whether the store has any life yet (a fresh store gets the source's history)."""
        return bool(self.events.lives())

    def failed_units(self) -> tuple[int, ...]:
        """Units whose life ended in failure (they have RUL labels), in order.

        Cached until :attr:`revision` moves: the agent asks several times a round
        (datasets, the model check's probe windows) and the lives query was the
        largest part of each answer.
        """
        cached = self._failed_units
        if cached is None or cached[0] != self.revision:
            units = tuple(r.unit for r in self.events.lives() if r.end_kind == "failure")
            cached = self._failed_units = (self.revision, units)
        return cached[1]

    def rul_labels(self, data: UnitData) -> npt.NDArray[np.float32]:
        """RUL of each reading of ``data`` (a failed life), in ``config.rul_unit``."""
        rows = self.events.lives(from_unit=data.unit)
        if not rows or rows[0].unit != data.unit:
            raise EventError(f"unit {data.unit} is not a known life")
        hours = self.config.rul_unit == "hours"
        if hours and data.ts is None:
            raise DataError(f"unit {data.unit}: readings without times cannot be labelled")
        times = data.ts if hours else data.cycles
        return rul_labels(
            rows[0].life(len(data.cycles)), np.asarray(times), unit=self.config.rul_unit
        )

    def _time_axis(self, cycle: int, ts: float) -> float:
        return float(cycle) if self.config.rul_unit == "cycles" else ts / 3600.0

    # Readings ---------------------------------------------------------------------
    def place(self, sample: SensorSample, now: float) -> Placement:
        """Store one reading in the life it belongs to and watch it.

        Events due before the reading are applied first. A source that moves to a new
        unit without reporting a failure had its unit replaced (a ``replace`` event);
        a sample marked ``failed`` becomes a ``failure`` event and the technician's
        ``repair``, which close the life once the clock has moved on.
        """
        # The source's own timestamp when it has one (CSV time column, OPC UA source time).
        base = sample.ts if sample.ts is not None else now
        ts = max(base, self._last_ts + _MIN_STEP_S) if self._last_ts is not None else base
        if self._source_unit is not None and sample.unit != self._source_unit:
            if not self._source_failed and self._last_ts is not None:
                self.record(
                    "replace",
                    ts=self._last_ts,
                    source="simulator",
                    note=f"the source moved on to unit {sample.unit} without a failure",
                )
            self._source_failed = False
        self._source_unit = sample.unit
        self.apply_due(ts)
        if self._current is None:
            last = self.store.last_unit()  # readings of a store from before lives: left alone
            self._current = LifeRow(
                unit=0 if last is None else last + 1,
                start_ts=ts,
                end_ts=None,
                end_kind=None,
                opened_by=None,
                events=(),
                n_readings=0,
                first_seq=None,
            )
            self.events.insert_life(self._current)
            self.revision += 1
            self.watch.unit = self._current.unit
        unit, cycle = self._current.unit, self._next_cycle
        seq = self.store.append(unit=unit, cycle=cycle, ts=ts, values=sample.values)
        self._last_ts = ts
        self._next_cycle += 1
        self._watch(seq, cycle, ts, sample.values)
        if sample.failed:
            self._source_failed = True
            self.record("failure", ts=ts, source="simulator", note="the unit ran to failure")
            self.record(
                "repair", ts=ts, source="simulator", note="the technician repaired the machine"
            )
        return Placement(unit=unit, cycle=cycle, ts=ts, seq=seq)

    def _watch(self, seq: int, cycle: int, ts: float, values: npt.ArrayLike) -> None:
        try:
            self.watch.feed(
                seq=seq, t=self._time_axis(cycle, ts), ts=ts, values=np.asarray(values, float)
            )
        except DataError as exc:  # one unusable reading must not stop the agent
            log.warning("%s: health monitor skipped a reading: %s", self.config.device, exc)
        self._since_save += 1
        if self._since_save >= _SAVE_EVERY:
            self.save()

    def backfill(self, runs: Sequence[UnitRun], now: float) -> None:
        """Store run-to-failure history logged before the agent ran: one life per run,
        laid end to end before ``now`` (a cycle a minute), each closed by its failure
        and the repair after it. History is not re-published (readings nor events)."""
        total = sum(r.n_cycles for r in runs)
        start = now - total * _HISTORY_CYCLE_S
        done = 0
        first = self.store.last_unit()
        base = 0 if first is None else first + 1
        for i, run in enumerate(runs):
            ts = start + (done + np.arange(run.n_cycles)) * _HISTORY_CYCLE_S
            done += run.n_cycles
            self.store.append_unit(
                unit=base + i, values=run.sensors, ts=ts.tolist(), failed=False, sent=True
            )
            for kind, note in (
                ("failure", f"history unit {run.unit} ran to failure"),
                ("repair", "the technician repaired the machine"),
            ):
                event = self._new_event(kind, float(ts[-1]), "simulator", note)  # type: ignore[arg-type]
                self.events.add_event(event, sent=True, applied=True)
        if runs:
            self._recut(start)

    # Events -----------------------------------------------------------------------
    def _new_event(
        self, kind: EventKind, ts: float, source: EventSource, note: str
    ) -> MaintenanceEvent:
        return MaintenanceEvent.new(
            fleet=self.config.fleet,
            device=self.config.device,
            kind=kind,
            ts=ts,
            source=source,
            note=note,
        )

    def record(self, kind: EventKind, *, ts: float, source: EventSource, note: str = "") -> None:
        """An event this agent creates itself: stored, then published (QoS 1)."""
        self.events.add_event(self._new_event(kind, ts, source, note), sent=False)
        self.poll(self.clock())

    def receive(self, payload: bytes) -> bool:
        """An event from the broker (an operator tool, or our own echo); True if new.

        Raises :class:`MessageError` for a malformed event, one for another machine or
        an id reused for a different event.
        """
        event = decode_message(MaintenanceEvent, payload)
        if (event.fleet, event.device) != (self.config.fleet, self.config.device):
            self.stats.events_rejected += 1
            raise MessageError(f"event {event.event_id} is for {event.fleet}/{event.device}")
        try:
            new = self.events.add_event(event, sent=True)
        except EventError as exc:
            self.stats.events_rejected += 1
            raise MessageError(str(exc)) from exc
        if new:
            self.stats.events_received += 1
        return new

    def poll(self, now: float) -> None:
        """Pick up events stored since the last poll (any process) and apply the due ones."""
        marker = self.events.events_marker()
        if marker != self._polled:  # else nothing can have been added: skip the query
            records = self.events.events_after(self._seen, limit=_POLL_LIMIT)
            if records:
                self._seen = records[-1].seq
                self._pending.extend(r for r in records if not r.applied)
            if len(records) < _POLL_LIMIT:  # all read; else the rest comes next poll
                self._polled = marker
        if self._pending and now > -math.inf:
            self.apply_due(now)

    def apply_due(self, now: float) -> None:
        """Cut the lives at every pending event older than ``now``."""
        due = [r for r in self._pending if r.event.ts < now]
        if not due:
            return
        self.events.mark_events([r.seq for r in due], column="applied")
        self._pending = [r for r in self._pending if r.event.ts >= now]
        self._recut(min(r.event.ts for r in due))

    # Re-cutting lives ---------------------------------------------------------------
    def _recut(self, t: float) -> None:
        """Re-derive the lives from the one before the reading at/after ``t`` onwards."""
        store = self.store
        at = store.unit_at_or_after(t)
        at = store.last_unit() if at is None else at
        if at is None:
            u, prev_last = (0 if self._current is None else self._current.unit), None
        else:
            before = store.unit_before(at)
            u = at if before is None else before
            earlier = store.unit_before(u)
            prev_last = None if earlier is None else store.last_ts(earlier)
        index = store.reading_index(from_unit=u)
        # The boundary before life u is every event in [last reading before u, first of u):
        # those at exactly prev_last included, they open life u.
        lives = split_lives(index.ts, self.events.applied_events(since_ts=prev_last))
        # Position of each old unit's first reading: a life starting there keeps its cycle
        # numbers (its first readings may have been pruned); one cut out of a unit starts at 0.
        _, first_pos = np.unique(index.unit, return_index=True)
        starts = set(first_pos.tolist())
        moves: list[tuple[int, int, int]] = []
        rows: list[LifeRow] = []
        failed: dict[int, int] = {}
        keep_head_below = math.inf
        next_cycle = 0
        for i, life in enumerate(lives):
            unit = u + i
            sl = life.readings
            old_unit, old_cycle, seqs = index.unit[sl], index.cycle[sl], index.seq[sl]
            new_cycle = old_cycle
            if life.n_readings:
                new_cycle = old_cycle - (0 if sl.start in starts else old_cycle[0])
                changed = (old_unit != unit) | (new_cycle != old_cycle)
                for j in np.flatnonzero(changed):
                    moves.append((int(seqs[j]), unit, int(new_cycle[j])))
                    if old_unit[j] == u:
                        keep_head_below = min(keep_head_below, float(old_cycle[j]))
                next_cycle = int(new_cycle[-1]) + 1
            else:
                next_cycle = 0
            if life.failed:
                failed[unit] = int(new_cycle[-1]) + 1
            rows.append(
                LifeRow(
                    unit=unit,
                    start_ts=life.start_ts,
                    end_ts=life.end_ts,
                    end_kind=life.end_kind,
                    opened_by=life.opened_by,
                    events=life.events,
                    n_readings=life.n_readings,
                    first_seq=int(seqs[0]) if life.n_readings else None,
                )
            )
        if not rows:
            return
        store.relabel(
            moves,
            from_unit=u,
            keep_head_below=keep_head_below,
            failed=failed,
            also=lambda db: MaintenanceStore.replace_lives(db, from_unit=u, rows=rows),
        )
        self.revision += 1
        self.stats.recuts += 1
        self._current = rows[-1]
        self._next_cycle = next_cycle
        self._follow(rows)

    def _follow(self, rows: Sequence[LifeRow]) -> None:
        """After a re-cut: close the watched life if it ended, watch the current one."""
        current = rows[-1]
        watch = self.watch
        if watch.first_seq is not None and watch.first_seq == current.first_seq:
            watch.unit = current.unit  # same life, renumbered
            return
        if watch.first_seq is None and current.first_seq is None:
            watch.unit = current.unit
            return
        ended = next((r for r in rows if r.first_seq == watch.first_seq), None)
        if ended is not None and ended.end_kind is not None and ended.end_ts is not None:
            self._score(watch, ended)
        self.watch = self._open_watch(current)
        self.save()

    def _score(self, watch: LifeWatch, life: LifeRow) -> None:
        assert life.end_kind is not None and life.end_ts is not None  # noqa: S101 - caller
        rows = self.store.unit_rows(life.unit)
        if not rows:
            return
        last = rows[-1]
        watch.unit = life.unit
        outcome = watch.outcome(
            device=self.config.device,
            end_kind=life.end_kind,
            end_ts=life.end_ts,
            last_t=self._time_axis(last.cycle, last.ts),
            failure_t=self._time_axis(last.cycle, life.end_ts),
            min_lead=self.config.alert_min_lead,
            healthy_margin=self.config.alert_healthy_margin,
        )
        self.stats.lives_closed += 1
        self.outcomes.append(outcome)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    # Loading ----------------------------------------------------------------------
    def _load_current(self) -> LifeRow | None:
        rows = self.events.lives()
        if not rows:
            return None
        current = rows[-1]
        data = self.store.unit_rows(current.unit)
        return LifeRow(
            unit=current.unit,
            start_ts=current.start_ts,
            end_ts=current.end_ts,
            end_kind=current.end_kind,
            opened_by=current.opened_by,
            events=current.events,
            n_readings=len(data),
            first_seq=data[0].seq if data else None,
        )

    def _current_last_ts(self) -> float | None:
        last = self.store.last_unit()
        return None if last is None else self.store.last_ts(last)

    def _count_cycle(self) -> int:
        if self._current is None:
            return 0
        rows = self.store.unit_rows(self._current.unit)
        return rows[-1].cycle + 1 if rows else 0

    def _open_watch(self, life: LifeRow | None) -> LifeWatch:
        cfg = self.config
        health = cfg.health if cfg.health_enabled and self._health_error is None else None
        args: dict[str, Any] = {
            "feature_names": self.sensor_names,
            "rul_k": cfg.rul_alert_k,
            "rul_n": cfg.rul_alert_n,
        }
        unit = 0 if life is None else life.unit
        first = None if life is None else life.first_seq
        try:
            watch = LifeWatch(unit=unit, first_seq=first, health=health, **args)
        except DataError as exc:
            self._health_error = str(exc)
            log.warning("%s: no health score: %s", cfg.device, exc)
            watch = LifeWatch(unit=unit, first_seq=first, health=None, **args)
        if life is None or life.first_seq is None:
            return watch
        saved = None
        try:
            saved = self.events.load_health(life.unit, first_seq=life.first_seq)
            if saved is not None:
                watch.restore(*saved)
        except DataError as exc:
            log.warning("%s: saved health state unusable, rebuilt: %s", cfg.device, exc)
            watch = LifeWatch(unit=unit, first_seq=first, health=health, **args)
            saved = None
        # Replay what the saved state has not seen (all of the life without one).
        for r in self.store.unit_rows(life.unit, after_seq=watch.last_seq if saved else 0):
            try:
                watch.feed(seq=r.seq, t=self._time_axis(r.cycle, r.ts), ts=r.ts, values=r.values)
            except DataError:
                continue
        return watch

    # Predictions and persistence -----------------------------------------------------
    def predicted(self, *, low: bool, cycle: int | None) -> bool:
        """A prediction was made (``low``: RUL below the threshold): the RUL alert."""
        ts = self._last_ts if self._last_ts is not None else self.clock()
        return self.watch.predicted(low=low, t=self._time_axis(cycle or 0, ts))

    def prediction_fields(self) -> dict[str, Any]:
        """The health fields of a Prediction (health, anomaly, anomaly_reason)."""
        return self.watch.health_fields()

    def save(self) -> None:
        """Persist the life watch (also done every few readings and at each new life)."""
        self._since_save = 0
        if self._current is None:
            return
        arrays, extra = self.watch.state()
        try:
            self.events.save_health(
                self.watch.unit, first_seq=self.watch.first_seq, state=arrays, extra=extra
            )
        except StorageError as exc:
            log.warning("%s: cannot save the health state: %s", self.config.device, exc)

    # Publishing -------------------------------------------------------------------
    def flush(self) -> None:
        """Publish stored events the broker has not acknowledged (QoS 1, store-and-forward)."""
        still: list[tuple[PublishHandle, list[int]]] = []
        done: list[int] = []
        for handle, seqs in self._inflight:
            try:
                delivered = handle.delivered
            except TransportError:
                continue  # that publish failed: the event is still unsent, sent again below
            if delivered:
                done.extend(seqs)
            else:
                still.append((handle, seqs))
        self._inflight = still
        if done:
            self.events.mark_events(done, column="sent")
            self.stats.events_published += len(done)
        busy = {s for _, seqs in self._inflight for s in seqs}
        for record in self.events.unsent_events(_MAX_INFLIGHT):
            if record.seq in busy or len(self._inflight) >= _MAX_INFLIGHT:
                continue
            try:
                handle = self.transport.publish(self.topic, encode_message(record.event))
            except TransportError as exc:
                log.debug("%s: event not published yet: %s", self.config.device, exc)
                return
            self._inflight.append((handle, [record.seq]))
