"""Lives and labels through the agent's store, on hand-made event sequences.

A machine with no notion of units (like a real one) streams readings; maintenance
events reach its store from the CLI (a second SQLite connection, as ``fedge agent
event`` does), from MQTT and from the source itself. After every sequence the
store's units must be exactly the lives :func:`fedge.lives.split_lives` cuts from
all readings and events, and training labels exactly :func:`fedge.lives.rul_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.agent import EdgeAgent
from edge_agent.maintenance_store import MaintenanceStore
from edge_agent.sources import SensorSample, SourceHealth
from edge_agent.store import ReadingStore
from fedge.codec import decode_frame
from fedge.config import AgentConfig
from fedge.data.simulator import UnitRun
from fedge.errors import MessageError
from fedge.lives import EventKind, MaintenanceEvent, rul_labels, split_lives
from fedge.messages import RoundAnnouncement, decode_message, encode_message
from fedge.spec import ModelSpec
from fedge.topics import Topics
from fedge.transport import InMemoryBroker
from tests.unit.test_agent import Recorder, publisher

FLEET = "unit"
DEVICE = "m-1"
TOPICS = Topics(FLEET)
T0 = 1_700_000_000.0
NAMES = ("a", "b", "c")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Machine:
    """A source with no units (unit 0 forever), like a real machine; Gaussian noise."""

    seed: int = 0
    failed_at: set[int] = field(default_factory=set)
    shift_from: int | None = None
    shift: tuple[float, ...] = (0.0, 0.0, 0.0)
    _i: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return NAMES

    def read(self) -> SensorSample:
        i = self._i
        self._i += 1
        x = self._rng.normal(0.0, 1.0, len(NAMES)) + np.array([10.0, 20.0, 30.0])
        if self.shift_from is not None and i >= self.shift_from:
            x = x + np.asarray(self.shift)
        return SensorSample(
            unit=0, cycle=i, values=x.astype(np.float32), failed=i in self.failed_at
        )

    def history(self, n_units: int) -> list[UnitRun]:
        return []

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def health(self) -> SourceHealth:
        return SourceHealth(state="ok", readings=self._i)


def make_agent(
    tmp_path: Path,
    clock: Clock,
    *,
    broker: InMemoryBroker | None = None,
    source: Machine | None = None,
    **config: object,
) -> EdgeAgent:
    cfg = AgentConfig.model_validate(
        {
            "fleet": FLEET,
            "device": DEVICE,
            "store_path": tmp_path / "agent.sqlite",
            "sample_interval_s": 0.0,
            "background_training": False,
            **config,
        }
    )
    broker = broker or InMemoryBroker()
    return EdgeAgent(
        cfg,
        transport=broker.transport(DEVICE),
        source=source or Machine(),
        store=ReadingStore(cfg.store_path, n_features=len(NAMES)),
        clock=clock,
    )


def event(kind: EventKind, ts: float, note: str = "") -> MaintenanceEvent:
    return MaintenanceEvent.new(
        fleet=FLEET, device=DEVICE, kind=kind, ts=ts, source="cli", note=note
    )


def cli_write(path: Path, ev: MaintenanceEvent) -> None:
    """What `fedge agent event` does: its own connection to the running agent's store."""
    store = MaintenanceStore.open(path)
    try:
        store.add_event(ev, sent=False)
    finally:
        store.close()


def sample_at(agent: EdgeAgent, clock: Clock, ts: float) -> None:
    clock.now = ts
    agent._sample(ts)
    agent.step()


def assert_matches_split_lives(agent: EdgeAgent) -> None:
    """The store's units/cycles are split_lives over every reading and applied event."""
    store = agent.store
    index = store.reading_index(from_unit=0)
    events = [r.event for r in agent.maintenance.events.all_events() if r.applied]
    lives = split_lives(index.ts, events)
    rows = agent.maintenance.events.lives()
    assert [r.unit for r in rows] == list(range(len(lives)))
    for life, row in zip(lives, rows, strict=True):
        assert index.unit[life.readings].tolist() == [life.index] * life.n_readings
        assert index.cycle[life.readings].tolist() == list(range(life.n_readings))
        assert (row.end_kind, row.end_ts, row.events) == (life.end_kind, life.end_ts, life.events)
        assert row.opened_by == life.opened_by and row.start_ts == life.start_ts
    failed = [life.index for life in lives if life.failed]
    assert agent.maintenance.failed_units() == tuple(failed)
    assert store.failed_units() == failed
    for unit in failed:
        data = store.unit_data(unit)
        np.testing.assert_array_equal(
            agent.maintenance.rul_labels(data),
            rul_labels(lives[unit], data.cycles, unit="cycles"),
        )


def test_a_failure_from_the_cli_closes_the_running_life_and_labels_it(tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(tmp_path, clock)
    agent.start()
    for i in range(10):
        sample_at(agent, clock, T0 + i)
    cli_write(agent.config.store_path, event("failure", T0 + 9))  # at the last reading
    cli_write(agent.config.store_path, event("repair", T0 + 9.5))
    clock.now = T0 + 9.7
    agent.step()  # the agent polls its store: no restart needed
    for i in range(10, 14):
        sample_at(agent, clock, T0 + i)
    assert agent.maintenance.failed_units() == (0,)
    assert agent.store.unit_data(0).cycles.tolist() == list(range(10))
    assert agent.store.unit_data(1).cycles.tolist() == [0, 1, 2, 3]  # the next life
    np.testing.assert_array_equal(
        agent.maintenance.rul_labels(agent.store.unit_data(0)), np.arange(9, -1, -1)
    )
    assert_matches_split_lives(agent)
    agent.stop()


def test_a_repair_without_failure_is_censored_and_gives_no_rul_target(tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(tmp_path, clock)
    agent.start()
    for i in range(40):
        sample_at(agent, clock, T0 + i)
    cli_write(agent.config.store_path, event("repair", T0 + 39.5))
    for i in range(40, 45):
        sample_at(agent, clock, T0 + i)
    rows = agent.maintenance.events.lives()
    assert [(r.unit, r.end_kind) for r in rows] == [(0, "repair"), (1, None)]
    assert agent.maintenance.failed_units() == ()
    train, hold = agent.datasets(_spec())
    assert len(train) == len(hold) == 0  # a censored life is not a RUL target
    assert_matches_split_lives(agent)
    agent.stop()


def test_a_late_failure_moves_the_readings_after_it_into_a_new_life(tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(tmp_path, clock)
    agent.start()
    for i in range(30):
        sample_at(agent, clock, T0 + i)
    # Entered now, at T0+29, for a failure at T0+19 (and the repair at T0+19.5).
    cli_write(agent.config.store_path, event("failure", T0 + 19))
    cli_write(agent.config.store_path, event("repair", T0 + 19.5))
    agent.step()
    assert agent.store.unit_data(0).cycles.tolist() == list(range(20))
    assert agent.store.unit_data(1).cycles.tolist() == list(range(10))  # counted from 0
    assert agent.maintenance.current_unit == 1
    sample_at(agent, clock, T0 + 30)
    assert agent._current_unit == 1 and agent._current_cycle == 10
    assert_matches_split_lives(agent)
    agent.stop()


def test_a_late_failure_before_a_recorded_repair_makes_that_life_a_failure(
    tmp_path: Path,
) -> None:
    clock = Clock()
    agent = make_agent(tmp_path, clock)
    agent.start()
    for i in range(10):
        sample_at(agent, clock, T0 + i)
    cli_write(agent.config.store_path, event("repair", T0 + 12))  # repaired, no failure known
    for i in range(13, 20):
        sample_at(agent, clock, T0 + i)
    assert agent.maintenance.failed_units() == ()
    # Then someone records that it had failed at T0+11, before the repair.
    cli_write(agent.config.store_path, event("failure", T0 + 11))
    agent.step()
    rows = agent.maintenance.events.lives()
    assert [(r.unit, r.end_kind, r.end_ts) for r in rows] == [
        (0, "failure", T0 + 11),
        (1, None, None),
    ]
    assert len(rows[0].events) == 2  # one boundary: the failure, then the repair
    assert_matches_split_lives(agent)
    agent.stop()


def test_a_future_event_waits_for_the_clock(tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(tmp_path, clock)
    agent.start()
    for i in range(5):
        sample_at(agent, clock, T0 + i)
    cli_write(agent.config.store_path, event("replace", T0 + 7.5))  # planned replacement
    for i in range(5, 8):
        sample_at(agent, clock, T0 + i)
    assert agent.maintenance.current_unit == 0  # not yet
    sample_at(agent, clock, T0 + 8)
    assert agent.maintenance.current_unit == 1
    assert agent.store.unit_data(0).cycles.tolist() == list(range(8))
    assert agent.store.unit_data(1).cycles.tolist() == [0]
    assert_matches_split_lives(agent)
    agent.stop()


def test_events_before_the_first_reading_only_open_the_first_life(tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(tmp_path, clock)
    agent.start()
    cli_write(agent.config.store_path, event("replace", T0 - 100, note="installed"))
    for i in range(3):
        sample_at(agent, clock, T0 + i)
    (row,) = agent.maintenance.events.lives()
    assert row.end_kind is None and row.start_ts == T0 - 100 and row.opened_by is not None
    assert_matches_split_lives(agent)
    agent.stop()


def test_mqtt_events_are_stored_once_and_echoes_are_harmless(tmp_path: Path) -> None:
    clock = Clock()
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_events)
    agent = make_agent(tmp_path, clock, broker=broker)
    agent.start()
    for i in range(6):
        sample_at(agent, clock, T0 + i)
    operator = publisher(broker)
    ev = event("failure", T0 + 5).model_copy(update={"source": "operator"})
    for _ in range(3):  # QoS 1 redelivers
        operator.publish(TOPICS.events(DEVICE), encode_message(ev))
    clock.now = T0 + 5.5
    agent.step()
    assert agent.maintenance.stats.events_received == 1
    assert [r.event for r in agent.maintenance.events.all_events()] == [ev]
    assert agent.maintenance.failed_units() == (0,)
    # The same id for another event is refused (counted), so is another machine's event.
    other = ev.model_copy(update={"kind": "repair"})
    stranger = ev.model_copy(update={"device": "m-2", "event_id": event("repair", T0).event_id})
    for bad in (other, stranger):
        operator.publish(TOPICS.events(DEVICE), encode_message(bad))
    agent.step()
    assert agent.stats.rejected_messages == 2 and agent.maintenance.stats.events_rejected == 2
    with pytest.raises(MessageError, match="different event"):
        agent.maintenance.receive(encode_message(other))
    # Events that came from the broker are not published back.
    clock.now = T0 + 30
    agent.step()
    assert sum(decode_message(MaintenanceEvent, m.payload) == ev for m in rec.messages) == 3
    assert_matches_split_lives(agent)
    agent.stop()


def test_cli_and_source_events_are_published_until_acknowledged(tmp_path: Path) -> None:
    clock = Clock()
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_events)
    agent = make_agent(tmp_path, clock, broker=broker, source=Machine(failed_at={4}))
    agent.start()
    for i in range(6):
        sample_at(agent, clock, T0 + i)
    cli_write(agent.config.store_path, event("replace", T0 + 5.5, note="new pump"))
    clock.now = T0 + 20  # past the flush interval
    agent.step()
    published = [decode_message(MaintenanceEvent, m.payload) for m in rec.messages]
    assert [(e.kind, e.source) for e in published] == [
        ("failure", "simulator"),
        ("repair", "simulator"),
        ("replace", "cli"),
    ]
    assert published[0].ts == published[1].ts == T0 + 4  # at the failed reading
    clock.now = T0 + 40
    agent.step()  # acknowledged: marked sent, not published again
    assert agent.maintenance.events.unsent_events(10) == []
    assert len(rec.messages) == 3
    assert [(r.end_kind, r.n_readings) for r in agent.maintenance.events.lives()][:2] == [
        ("failure", 5),
        ("replace", 1),
    ]
    assert_matches_split_lives(agent)
    agent.stop()


def test_a_device_without_failures_declines_rounds_with_no_data(tmp_path: Path) -> None:
    clock = Clock()
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_updates)
    agent = make_agent(tmp_path, clock, broker=broker)
    agent.start()
    for i in range(5):
        sample_at(agent, clock, T0 + i)
    # Issued on the agent's (test) clock: agents refuse rounds issued in their future.
    ann = RoundAnnouncement(
        fleet=FLEET, round_id=0, task="stats", base_version=0, issued_at=clock.now,
        deadline=clock.now + 60, min_clients=1, model=_spec(),
    )
    publisher(broker).publish(TOPICS.round_current, encode_message(ann), retain=True)
    agent.step()
    (msg,) = rec.on(TOPICS.update(0, DEVICE))
    frame = decode_frame(msg.payload)
    assert frame.header.kind == "decline" and frame.header.reason == "no_data"
    assert frame.header.detail == f"device {DEVICE} has no data for a stats round"
    agent.stop()


def test_lives_and_the_health_watch_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(tmp_path, clock, source=Machine(seed=3))
    agent.start()
    for i in range(37):
        sample_at(agent, clock, T0 + i)
    cli_write(agent.config.store_path, event("failure", T0 + 20))
    cli_write(agent.config.store_path, event("repair", T0 + 60))  # still ahead of the clock
    agent.step()
    before = agent.maintenance.watch.monitor
    assert before is not None
    agent.stop()
    agent.store.close()
    again = make_agent(tmp_path, clock, source=Machine(seed=3))
    after = again.maintenance.watch.monitor
    assert after is not None
    assert again.maintenance.current_unit == 1
    assert after.readings_seen == before.readings_seen == 16  # readings 21..36
    np.testing.assert_array_equal(after.state()["baseline_rows"], before.state()["baseline_rows"])
    for i in range(61, 63):
        sample_at(again, clock, T0 + i)  # the pending repair applies now
    assert again.maintenance.current_unit == 2
    assert_matches_split_lives(again)
    again.stop()


def _spec() -> ModelSpec:
    return ModelSpec(n_features=len(NAMES), window=4)


# Any sequence: the store always agrees with split_lives ------------------------------------
STEP = st.tuples(
    st.sampled_from(["reading", "reading", "reading", "event"]),
    st.sampled_from(["failure", "repair", "replace"]),
    st.floats(min_value=-12.0, max_value=3.0),  # event time relative to now: mostly late
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(STEP, min_size=1, max_size=40))
def test_any_event_sequence_gives_the_lives_of_split_lives(
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[str, EventKind, float]],
) -> None:
    tmp = tmp_path_factory.mktemp("seq")
    clock = Clock()
    agent = make_agent(tmp, clock)
    agent.start()
    t = T0
    for what, kind, offset in steps:
        t += 1.0
        if what == "reading":
            sample_at(agent, clock, t)
        else:
            cli_write(agent.config.store_path, event(kind, t + offset))
            clock.now = t
            agent.step()
    clock.now = t + 10.0  # every event is due
    agent.step()
    assert_matches_split_lives(agent)
    agent.stop()
    agent.store.close()


def test_rul_in_operating_hours_counts_to_the_failure_event(tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(tmp_path, clock, rul_unit="hours")
    agent.start()
    for i in range(6):  # a reading every 10 minutes
        sample_at(agent, clock, T0 + 600 * i)
    cli_write(agent.config.store_path, event("failure", T0 + 3600))  # 10 min after the last
    clock.now = T0 + 4000
    agent.step()
    data = agent.store.unit_data(0)
    # Hours from each reading to the failure event: 1, 5/6, ..., 1/6.
    np.testing.assert_allclose(
        agent.maintenance.rul_labels(data), [1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6], rtol=1e-6
    )
    agent.stop()


def _traced(agent: EdgeAgent, needle: str) -> list[str]:
    """The SQL statements containing ``needle`` the agent's store runs from now on."""
    queries: list[str] = []
    agent.store._db.set_trace_callback(
        lambda sql: queries.append(sql) if needle in sql else None
    )
    return queries


def test_polling_queries_the_events_only_when_something_may_have_been_added(
    tmp_path: Path,
) -> None:
    clock = Clock()
    agent = make_agent(tmp_path, clock)
    agent.start()
    queries = _traced(agent, "FROM events WHERE seq >")
    for _ in range(5):
        agent.step()
    assert queries == []  # nothing new: one pragma a step, no query
    cli_write(agent.config.store_path, event("failure", T0))  # another connection
    clock.now = T0 + 1
    agent.step()
    assert len(queries) == 1 and agent.maintenance.events.all_events()[0].applied
    agent.step()
    assert len(queries) == 1
    # An event stored through the agent's own connection (as `receive` does).
    agent.maintenance.events.add_event(event("repair", T0 + 0.5), sent=True)
    clock.now = T0 + 2
    agent.step()
    assert len(queries) == 2
    assert [r.event.kind for r in agent.maintenance.events.all_events() if r.applied] == [
        "failure", "repair"]
    agent.stop()


def test_failed_units_query_the_lives_only_after_they_changed(tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(tmp_path, clock)
    agent.start()
    queries = _traced(agent, "FROM lives")
    sample_at(agent, clock, T0)  # opens the first life: the lives changed
    assert agent.maintenance.failed_units() == ()
    asked = len(queries)
    assert asked >= 1
    for _ in range(3):
        assert agent.maintenance.failed_units() == ()
    assert len(queries) == asked  # cached: no query while the lives stay as they are
    cli_write(agent.config.store_path, event("failure", T0 + 0.5))  # another process
    clock.now = T0 + 1
    agent.step()  # polls the event and re-cuts the lives
    assert agent.maintenance.failed_units() == (0,)
    assert len(queries) > asked
    agent.stop()
