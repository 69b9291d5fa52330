"""The aggregator service on disk: fail-fast directory check, journals on a restart, failing
saves and journal writes that do not stop a round, bounded round history.

The fleet is literal frames published through the in-memory broker; checkpoints and
journals are real files in a temp directory.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregator.checkpoint import CheckpointDirectoryError, CheckpointStore
from aggregator.journal import JournalStore, parse_journal
from aggregator.service import AggregatorService
from fedge.codec import decode_frame
from fedge.config import AggregatorConfig
from fedge.errors import StorageError
from fedge.messages import RoundAnnouncement, decode_message
from fedge.transport import InboundMessage, InMemoryBroker
from tests.unit.test_coordinator import (
    FLEET,
    INITIAL_TENSORS,
    MAX_UPDATE,
    SPEC,
    T0,
    TOPICS,
    TRAINABLE,
    _clean_env,  # noqa: F401 - the autouse fixture that clears FEDGE_* variables
    frame,
    make,
    shifted,
    status,
)

DEVICES = ("pump-01", "pump-02", "pump-03")
DELTAS = {"pump-01": (1.0, 10), "pump-02": (3.0, 30), "pump-03": (-2.0, 10)}  # mean +1.6


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def config(tmp_path: Path, **overrides: object) -> AggregatorConfig:
    settings: dict[str, object] = {
        "fleet": FLEET,
        "rounds": 3,
        "min_clients": 3,
        "model": SPEC,
        "round_timeout_s": 60.0,
        "max_update_bytes": MAX_UPDATE,
        "federated_stats": False,
        "final_evaluation": False,
        "checkpoint_dir": tmp_path / "ckpt",
    }
    settings.update(overrides)
    return AggregatorConfig(**settings)  # type: ignore[arg-type]


class Fleet:
    """Three devices that speak with literal frames, and a probe that records what the
    aggregator publishes."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker
        self.device = broker.transport("devices")
        self.device.connect(on_message=lambda m: None)
        self.seen: list[InboundMessage] = []
        probe = broker.transport("probe")
        probe.connect(on_message=self.seen.append)
        probe.subscribe(TOPICS.round_current)
        probe.subscribe(TOPICS.global_model)

    def online(self) -> None:
        for d in DEVICES:
            self.device.publish(TOPICS.status(d), status(d), retain=True)

    def answer(self, device: str, round_id: int, *, base_version: int = 0) -> bytes:
        delta, n = DELTAS[device]
        payload = frame(device, round_id, shifted(delta), num_examples=n,
                        base_version=base_version)
        self.device.publish(TOPICS.update(round_id, device), payload)
        return payload

    def announcements(self) -> list[RoundAnnouncement]:
        return [decode_message(RoundAnnouncement, m.payload) for m in self.seen
                if m.topic == TOPICS.round_current]

    def versions(self) -> list[int | None]:
        return [decode_frame(m.payload).header.version for m in self.seen
                if m.topic == TOPICS.global_model]


Factory = Callable[..., AggregatorService]


@pytest.fixture
def service() -> Iterator[Factory]:
    """Started services, closed after the test (a "killed" one only loses its session)."""
    started: list[AggregatorService] = []

    def make_service(cfg: AggregatorConfig, broker: InMemoryBroker, clock: Clock,
                     client: str = "aggregator") -> AggregatorService:
        svc = AggregatorService(cfg, transport=broker.transport(client), clock=clock)
        svc.start()
        started.append(svc)
        return svc

    yield make_service
    for svc in started:
        svc.close()


def moved_by(svc: AggregatorService, delta: float) -> None:
    for name in TRAINABLE:
        np.testing.assert_allclose(svc.coordinator.tensors[name], INITIAL_TENSORS[name] + delta,
                                   rtol=1e-5, atol=1e-5)


def test_an_unusable_checkpoint_directory_fails_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = config(tmp_path, checkpoint_dir=blocker / "ckpt")
    with pytest.raises(CheckpointDirectoryError, match="is not usable"):
        AggregatorService(cfg, transport=InMemoryBroker().transport("aggregator"))
    assert isinstance(CheckpointDirectoryError("x"), StorageError)


def test_restart_mid_round_resumes_from_the_journal(tmp_path: Path, service: Factory) -> None:
    broker, clock = InMemoryBroker(), Clock()
    fleet = Fleet(broker)
    first = service(config(tmp_path), broker, clock, "aggregator-1")
    fleet.online()
    first.step(timeout=0)
    (ann,) = fleet.announcements()
    replies = {d: fleet.answer(d, ann.round_id) for d in DEVICES[:2]}
    first.step(timeout=0)
    assert first.coordinator.open is not None and first.coordinator.open.counted == 2
    broker.drop("aggregator-1")  # kill -9: no close, no goodbye

    clock.now += 5
    second = service(config(tmp_path), broker, clock, "aggregator-2")
    assert second.stats.recovery.resumed == ann.round_id
    second.step(timeout=0)  # the retained statuses
    assert fleet.announcements()[-1] == ann  # the same round, announced again
    fleet.device.publish(TOPICS.update(ann.round_id, "pump-01"), replies["pump-01"])  # redelivery
    fleet.answer("pump-03", ann.round_id)
    second.step(timeout=0)
    (summary,) = second.history
    assert (summary.round_id, summary.outcome, summary.participants) == (ann.round_id,
                                                                         "completed", 3)
    assert second.coordinator.duplicates_total == 1
    moved_by(second, 1.6)  # (10 * 1 + 30 * 3 + 10 * -2) / 50, from all three replies
    assert fleet.announcements()[-1].round_id == ann.round_id + 1
    assert CheckpointStore(tmp_path / "ckpt").load_latest().version == 1  # type: ignore[union-attr]
    # Only the new round's journal is left: the closed one is covered by the checkpoint.
    assert JournalStore(tmp_path / "ckpt").round_ids() == [ann.round_id + 1]


def test_a_failing_save_still_publishes_and_is_retried_next_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: Factory
) -> None:
    broker, clock = InMemoryBroker(), Clock()
    fleet = Fleet(broker)
    svc = service(config(tmp_path), broker, clock)
    fleet.online()
    svc.step(timeout=0)
    real_save = CheckpointStore.save
    calls: list[int] = []

    def failing_save(self: CheckpointStore, checkpoint: object) -> Path:
        calls.append(1)
        if len(calls) == 1:
            raise StorageError("disk full")
        return real_save(self, checkpoint)  # type: ignore[arg-type]

    monkeypatch.setattr(CheckpointStore, "save", failing_save)
    for d in DEVICES:
        fleet.answer(d, 0)  # no statistics round in this config: training starts at round 0
    svc.step(timeout=0)
    assert svc.stats.save_failures == 1
    assert fleet.versions() == [0, 1]  # the model was published all the same
    assert [a.round_id for a in fleet.announcements()] == [0, 1]  # and the next round opened
    assert CheckpointStore(tmp_path / "ckpt").load_latest() is None
    assert JournalStore(tmp_path / "ckpt").round_ids() == [0, 1]  # round 0's kept: unsaved

    clock.now += 61  # round 2 fails at its deadline: the pending save is retried first
    svc.step(timeout=0)
    assert svc.history[-1].outcome == "failed"
    saved = CheckpointStore(tmp_path / "ckpt").load_latest()
    assert saved is not None and saved.version == 1 and len(calls) == 2
    assert JournalStore(tmp_path / "ckpt").round_ids() == [2]  # round 2 is open


def test_a_failing_journal_write_is_counted_and_the_round_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: Factory
) -> None:
    broker, clock = InMemoryBroker(), Clock()
    fleet = Fleet(broker)
    svc = service(config(tmp_path), broker, clock)
    fleet.online()
    svc.step(timeout=0)

    def broken(self: JournalStore, round_id: int, record: bytes, *, sync: bool = True) -> None:
        raise StorageError("I/O error")

    monkeypatch.setattr(JournalStore, "append", broken)
    for d in DEVICES:
        fleet.answer(d, 0)
    svc.step(timeout=0)
    assert svc.stats.journal_failures == 4  # three replies and the close
    assert svc.history[-1].outcome == "completed"
    assert fleet.versions()[-1] == 1


def test_replies_handled_in_one_step_share_one_fsync_before_the_round_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: Factory
) -> None:
    broker, clock = InMemoryBroker(), Clock()
    fleet = Fleet(broker)
    svc = service(config(tmp_path), broker, clock)
    fleet.online()
    svc.step(timeout=0)
    watched = {"inode": (tmp_path / "ckpt" / "round-000000.journal").stat().st_ino}
    events: list[str] = []
    real_fsync, real_save = os.fsync, CheckpointStore.save

    def fsync(fd: int) -> None:
        ours = os.fstat(fd).st_ino == watched["inode"]
        events.append("fsync journal" if ours else "fsync other")
        real_fsync(fd)

    def save(self: CheckpointStore, checkpoint: object) -> Path:
        # What the journal holds when the round's results start to be made durable.
        entries = parse_journal(0, (tmp_path / "ckpt" / "round-000000.journal").read_bytes())
        events.append(f"save with {len(entries.entries)} replies journaled")
        return real_save(self, checkpoint)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(CheckpointStore, "save", save)
    for d in DEVICES:
        fleet.answer(d, 0)
    svc.step(timeout=0)  # the three replies are drained together; the third closes round 0
    assert svc.history[-1].outcome == "completed"
    # One fsync for the three replies, one for the close record, then the checkpoint.
    assert events[:3] == ["fsync journal", "fsync journal", "save with 3 replies journaled"]

    round_1 = tmp_path / "ckpt" / "round-000001.journal"
    watched["inode"] = round_1.stat().st_ino
    events.clear()
    fleet.answer("pump-01", 1, base_version=1)
    svc.step(timeout=0)  # one reply, round 1 stays open: synced before step returns
    assert events == ["fsync journal"]
    assert len(parse_journal(1, round_1.read_bytes()).entries) == 1
    assert not svc.journal.unsynced


def test_journal_gone_the_restarted_aggregator_opens_a_fresh_round_id(
    tmp_path: Path, service: Factory
) -> None:
    broker, clock = InMemoryBroker(), Clock()
    fleet = Fleet(broker)
    first = service(config(tmp_path), broker, clock, "aggregator-1")
    fleet.online()
    first.step(timeout=0)
    fleet.answer("pump-01", 0)
    first.step(timeout=0)
    broker.drop("aggregator-1")
    for path in (tmp_path / "ckpt").glob("round-*.journal"):
        path.unlink()  # the journal is lost with the crash

    second = service(config(tmp_path), broker, clock, "aggregator-2")
    second.step(timeout=0)
    # The broker's retained round 0 came before the statuses: round 1, never 0 again.
    assert [a.round_id for a in fleet.announcements()] == [0, 1]


def test_round_history_is_bounded_and_memory_stays_flat() -> None:
    coord = make(rounds=None, min_clients=2, history_limit=100, final_evaluation=False)
    coord.handle(TOPICS.status("pump-01"), status("pump-01"), T0)
    coord.handle(TOPICS.status("pump-02"), status("pump-02"), T0)

    def one_round(i: int) -> None:
        assert coord.open is not None
        rid, base = coord.open.expect.round_id, coord.version
        for device in ("pump-01", "pump-02"):
            payload = frame(device, rid, {k: coord.tensors[k] + np.float32(0.001)
                                          for k in TRAINABLE}, base_version=base)
            coord.handle(TOPICS.update(rid, device), payload, T0 + i)

    # Traced from the start, so the summaries that fall out of the history count as freed.
    tracemalloc.start()
    try:
        for i in range(200):  # warm-up: caches, interned strings, the history filling up
            one_round(i)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200, 1000):
            one_round(i)
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert coord.version == 1000
    assert len(coord.history) == 100
    assert coord.history[-1].round_id == 1000
    # Unbounded, 800 more summaries would be ~2 MB (about 2.4 KB each).
    assert growth < 64 * 1024, growth
