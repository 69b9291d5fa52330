"""Crash-safe rounds, sans I/O: the coordinator's journal effects and its restoration from
(checkpoint, journals) with literal frames."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aggregator.coordinator import (
    Effect,
    JournalClose,
    JournalOpen,
    JournalUpdate,
    Publish,
    RoundCoordinator,
    SaveCheckpoint,
)
from aggregator.journal import (
    JOURNAL_MAGIC,
    close_record,
    open_record,
    parse_journal,
    update_record,
)
from aggregator.recovery import restore_coordinator
from aggregator.state import Checkpoint, RoundJournal
from fedge.config import AggregatorConfig
from fedge.messages import RoundAnnouncement, decode_message
from fedge.strategies import FedAvg
from tests.unit.test_coordinator import (
    FLEET,
    INITIAL_TENSORS,
    MAX_UPDATE,
    SPEC,
    T0,
    TOPICS,
    TRAINABLE,
    _clean_env,  # noqa: F401 - the autouse fixture that clears FEDGE_* variables
    announcement,
    frame,
    online,
    shifted,
    summary,
)

DEVICES = ("pump-01", "pump-02", "pump-03")


def config(**overrides: object) -> AggregatorConfig:
    settings: dict[str, object] = {
        "fleet": FLEET,
        "rounds": 3,
        "min_clients": 3,
        "model": SPEC,
        "round_timeout_s": 60.0,
        "max_update_bytes": MAX_UPDATE,
        "final_evaluation": False,
    }
    settings.update(overrides)
    return AggregatorConfig(**settings)  # type: ignore[arg-type]


def checkpoint(*, version: int = 0, round_id: int = 0) -> Checkpoint:
    return Checkpoint(
        fleet=FLEET,
        version=version,
        round_id=round_id,
        spec=SPEC,
        tensors={k: v.copy() for k, v in INITIAL_TENSORS.items()},
    )


def fresh(cfg: AggregatorConfig | None = None) -> RoundCoordinator:
    return RoundCoordinator(
        cfg or config(), strategy=FedAvg(), initial=checkpoint(), trainable=TRAINABLE
    )


def restore(
    journals: Sequence[RoundJournal], *, initial: Checkpoint | None = None
) -> RoundCoordinator:
    coord, _ = restore_coordinator(
        config(),
        strategy=FedAvg(),
        checkpoint=initial or checkpoint(),
        journals=journals,
        trainable=TRAINABLE,
    )
    return coord


class Disk:
    """The journal file the service would write from the effects, as bytes."""

    def __init__(self) -> None:
        self.files: dict[int, bytes] = {}

    def apply(self, effects: Sequence[Effect]) -> None:
        for e in effects:
            if isinstance(e, JournalOpen):
                self.files[e.round_id] = JOURNAL_MAGIC + open_record(e.announcement, e.expected)
            elif isinstance(e, JournalUpdate):
                self.files[e.round_id] += update_record(e.topic, e.payload)
            elif isinstance(e, JournalClose):
                self.files[e.round_id] += close_record(e.outcome, e.ts)

    def journals(self) -> list[RoundJournal]:
        return [parse_journal(r, data) for r, data in self.files.items()]


UPDATES = {  # device -> (delta, examples): the round's weighted mean moves by
    "pump-01": (1.0, 10),  # (10 * 1 + 30 * 3 + 10 * -2) / 50 = 1.6
    "pump-02": (3.0, 30),
    "pump-03": (-2.0, 10),
}


def update(device: str, round_id: int = 1) -> bytes:
    delta, n = UPDATES[device]
    return frame(device, round_id, shifted(delta), num_examples=n)


def send(coord: RoundCoordinator, device: str, disk: Disk, now: float = T0 + 1) -> list[Effect]:
    effects = coord.handle(TOPICS.update(1, device), update(device), now)
    disk.apply(effects)
    return effects


def test_journal_effects_come_before_what_depends_on_them() -> None:
    coord, disk = fresh(), Disk()
    effects = online(coord, *DEVICES)
    opened = [e for e in effects if isinstance(e, JournalOpen)]
    assert [type(e).__name__ for e in effects] == ["JournalOpen", "Publish"]
    (pub,) = [e for e in effects if isinstance(e, Publish)]
    assert opened[0].announcement == pub.payload  # the journal holds the exact announcement
    assert opened[0].expected == DEVICES
    disk.apply(effects)
    first = send(coord, "pump-01", disk)
    assert first == [JournalUpdate(1, TOPICS.update(1, "pump-01"), update("pump-01"))]
    send(coord, "pump-02", disk)
    last = send(coord, "pump-03", disk)
    names = [type(e).__name__ for e in last]
    assert names == [
        "JournalUpdate",  # the reply, before the close it causes
        "JournalClose",  # the close, before its results
        "SaveCheckpoint",  # the new version on disk, before the fleet sees it
        "Publish",  # model/global
        "Publish",  # rounds/summary
        "RoundClosed",
        "JournalOpen",  # the next round's journal, before its announcement
        "Publish",  # rounds/current
    ]
    assert last[1] == JournalClose(1, "completed", T0 + 1)


def test_resume_equals_recomputation_and_reannounces_the_same_round() -> None:
    live, disk = fresh(), Disk()
    disk.apply(online(live, *DEVICES))
    ann_bytes = disk.files[1]
    send(live, "pump-01", disk)
    send(live, "pump-02", disk)

    # kill -9 here: a new coordinator from the checkpoint and the journal.
    restored, recovery = restore_coordinator(
        config(), strategy=FedAvg(), checkpoint=checkpoint(), journals=disk.journals(),
        trainable=TRAINABLE,
    )
    assert recovery.resumed == 1 and recovery.skipped == {}
    assert restored.open is not None
    assert restored.open.received == {"pump-01", "pump-02"}
    assert restored.open.counted == 2
    assert restored.open.expected == set(DEVICES)
    start = restored.start(T0 + 5)
    (reannounced,) = [
        e for e in start if isinstance(e, Publish) and e.topic == TOPICS.round_current
    ]
    assert reannounced.retain
    assert parse_journal(1, ann_bytes).announcement == reannounced.payload  # same bytes
    assert not [e for e in start if isinstance(e, SaveCheckpoint)]  # nothing new to save

    # The last device answers both: the results are identical, bit for bit, and equal
    # the mean computed by hand.
    online(restored, *DEVICES, now=T0 + 5)  # the retained statuses arrive
    assert restored.open is not None and restored.open.counted == 2
    a = send(live, "pump-03", disk)
    b = restored.handle(TOPICS.update(1, "pump-03"), update("pump-03"), T0 + 6)
    assert summary(a).participants == summary(b).participants == 3
    assert summary(b).num_examples == 50
    for name in TRAINABLE:
        np.testing.assert_array_equal(restored.tensors[name], live.tensors[name])
        np.testing.assert_allclose(
            restored.tensors[name], INITIAL_TENSORS[name] + 1.6, rtol=1e-5, atol=1e-5
        )
    assert restored.version == 1
    assert announcement(b).round_id == 2  # then a fresh round


def test_all_updates_journaled_then_killed_closes_at_once_on_restart() -> None:
    """The bug report: every update received, aggregator killed before it closed.

    Modelled by journaling all three replies but not the close (the crash came between).
    """
    live, disk = fresh(), Disk()
    disk.apply(online(live, *DEVICES))
    for device in DEVICES:
        effects = live.handle(TOPICS.update(1, device), update(device), T0 + 1)
        disk.apply([e for e in effects if isinstance(e, JournalUpdate)])
    restored = restore(disk.journals())
    restored.start(T0 + 30)
    # Every expected device has answered: the round closes on the first event.
    effects = online(restored, *DEVICES, now=T0 + 30)
    s = summary(effects)
    assert (s.round_id, s.outcome, s.participants, s.rejected) == (1, "completed", 3, 0)
    assert restored.version == 1
    assert announcement(effects).round_id == 2


def test_a_duplicate_after_resume_is_ignored_not_counted_twice() -> None:
    live, disk = fresh(), Disk()
    disk.apply(online(live, *DEVICES))
    send(live, "pump-01", disk)
    restored = restore(disk.journals())
    # The broker redelivers pump-01's reply (the crash came before its acknowledgement).
    again = restored.handle(TOPICS.update(1, "pump-01"), update("pump-01"), T0 + 5)
    assert again == []  # no journal record, no rejection, nothing
    assert restored.open is not None and restored.open.counted == 1
    assert restored.duplicates_total == 1
    assert restored.rejected_total == {}
    # A different reply from the same device is a replay, refused and counted.
    other = frame("pump-01", 1, shifted(9.0), num_examples=10)
    assert restored.handle(TOPICS.update(1, "pump-01"), other, T0 + 6) == []
    assert restored.rejected_total == {"replay": 1}


def test_a_torn_journal_tail_is_ignored_with_a_counted_reason() -> None:
    live, disk = fresh(), Disk()
    disk.apply(online(live, *DEVICES))
    send(live, "pump-01", disk)
    send(live, "pump-02", disk)
    disk.files[1] = disk.files[1][:-9]  # the crash tore pump-02's record
    restored, recovery = restore_coordinator(
        config(), strategy=FedAvg(), checkpoint=checkpoint(), journals=disk.journals(),
        trainable=TRAINABLE,
    )
    assert recovery.resumed == 1
    assert recovery.skipped == {"journal_truncated_record": 1}
    assert restored.open is not None and restored.open.received == {"pump-01"}
    # pump-02 was never acknowledged: its redelivery counts now, as the first time.
    restored.handle(TOPICS.update(1, "pump-02"), update("pump-02"), T0 + 5)
    effects = restored.handle(TOPICS.update(1, "pump-03"), update("pump-03"), T0 + 6)
    assert summary(effects).participants == 3
    for name in TRAINABLE:
        np.testing.assert_allclose(
            restored.tensors[name], INITIAL_TENSORS[name] + 1.6, rtol=1e-5, atol=1e-5
        )


def test_a_corrupt_record_is_ignored_with_a_counted_reason() -> None:
    live, disk = fresh(), Disk()
    disk.apply(online(live, *DEVICES))
    send(live, "pump-01", disk)
    send(live, "pump-02", disk)
    data = bytearray(disk.files[1])
    data[-20] ^= 0xFF
    disk.files[1] = bytes(data)
    _, recovery = restore_coordinator(
        config(), strategy=FedAvg(), checkpoint=checkpoint(), journals=disk.journals(),
        trainable=TRAINABLE,
    )
    assert recovery.skipped == {"journal_bad_checksum": 1}


def test_an_unusable_journal_gives_a_fresh_round_id() -> None:
    bad = parse_journal(1, b"FEDGJRN1\x00\x00")  # round 1 was announced, nothing readable
    restored, recovery = restore_coordinator(
        config(), strategy=FedAvg(), checkpoint=checkpoint(), journals=[bad],
        trainable=TRAINABLE,
    )
    assert recovery.resumed is None
    assert recovery.skipped == {"journal_truncated_record": 1, "journal_unusable": 1}
    assert restored.open is None
    assert announcement(online(restored, *DEVICES)).round_id == 2  # never 1 again


def test_journal_gone_the_brokers_retained_round_gives_a_fresh_round_id() -> None:
    live = fresh()
    retained = next(e for e in online(live, *DEVICES) if isinstance(e, Publish)).payload
    assert decode_message(RoundAnnouncement, retained).round_id == 1
    restored = restore([])  # the journal is gone: the checkpoint says round 0
    # The retained rounds/current arrives first (subscribed first), then the statuses.
    assert restored.handle(TOPICS.round_current, retained, T0 + 5) == []
    assert restored.last_round_id == 1
    assert announcement(online(restored, *DEVICES, now=T0 + 6)).round_id == 2


def test_a_fresh_round_that_reused_a_taken_id_is_reissued() -> None:
    live = fresh()
    retained = next(e for e in online(live, *DEVICES) if isinstance(e, Publish)).payload
    restored = restore([])
    first = announcement(online(restored, *DEVICES, now=T0 + 5))
    assert first.round_id == 1  # the same id the lost incarnation used: agents ignore it
    effects = restored.handle(TOPICS.round_current, retained, T0 + 6)
    assert announcement(effects).round_id == 2
    assert [type(e).__name__ for e in effects] == ["JournalOpen", "Publish"]
    # The echo of its own announcement changes nothing.
    own = next(e for e in effects if isinstance(e, Publish)).payload
    assert restored.handle(TOPICS.round_current, own, T0 + 7) == []
    assert restored.open is not None and restored.open.expect.round_id == 2


def test_a_closed_round_whose_checkpoint_was_lost_is_replayed_and_saved() -> None:
    live, disk = fresh(), Disk()
    disk.apply(online(live, *DEVICES))
    for device in DEVICES:
        send(live, device, disk)  # round 1 completes (v1); round 2 opens with base v1
    send_2 = frame("pump-01", 2, shifted(5.0), num_examples=10, base_version=1)
    disk.apply(live.handle(TOPICS.update(2, "pump-01"), send_2, T0 + 2))
    # The checkpoint of round 1 was never saved: the disk still has round 0's.
    restored, recovery = restore_coordinator(
        config(), strategy=FedAvg(), checkpoint=checkpoint(), journals=disk.journals(),
        trainable=TRAINABLE,
    )
    assert recovery.replayed == [1] and recovery.resumed == 2
    assert restored.version == 1  # never backwards from the published v1
    for name in TRAINABLE:
        np.testing.assert_array_equal(restored.tensors[name], live.tensors[name])
    assert restored.open is not None and restored.open.received == {"pump-01"}
    start = restored.start(T0 + 10)
    assert isinstance(start[0], SaveCheckpoint) and start[0].checkpoint.version == 1


def test_a_journal_that_does_not_follow_the_checkpoint_is_skipped() -> None:
    live, disk = fresh(), Disk()
    disk.apply(online(live, *DEVICES))
    # The same journal against a checkpoint at version 2: its base (0) does not follow.
    _, recovery = restore_coordinator(
        config(), strategy=FedAvg(), checkpoint=checkpoint(version=2, round_id=0),
        journals=disk.journals(), trainable=TRAINABLE,
    )
    assert recovery.resumed is None
    assert recovery.skipped == {"journal_does_not_follow": 1}


def test_journals_covered_by_the_checkpoint_are_left_alone() -> None:
    live, disk = fresh(), Disk()
    disk.apply(online(live, *DEVICES))
    restored, recovery = restore_coordinator(
        config(), strategy=FedAvg(), checkpoint=checkpoint(version=1, round_id=1),
        journals=disk.journals(), trainable=TRAINABLE,
    )
    assert recovery.resumed is None and recovery.skipped == {}
    assert announcement(online(restored, *DEVICES)).round_id == 2


def test_a_late_reply_is_counted_as_late_and_a_future_one_as_wrong_round() -> None:
    coord, disk = fresh(), Disk()
    disk.apply(online(coord, *DEVICES))
    for device in DEVICES:
        send(coord, device, disk)
    late = coord.handle(TOPICS.update(1, "pump-01"), update("pump-01"), T0 + 2)
    future = coord.handle(
        TOPICS.update(7, "pump-01"), frame("pump-01", 7, shifted(1.0), base_version=1), T0 + 2
    )
    assert late == future == []
    assert coord.rejected_total == {"late": 1, "wrong_round": 1}
    assert coord.open is not None and coord.open.rejected == {"late": 1, "wrong_round": 1}
