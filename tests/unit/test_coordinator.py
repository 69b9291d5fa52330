"""RoundCoordinator driven directly with literal bytes and a fake clock."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from aggregator.coordinator import (
    Effect,
    JournalClose,
    JournalOpen,
    JournalUpdate,
    Phase,
    Publish,
    RoundClosed,
    RoundCoordinator,
    SaveCheckpoint,
)
from aggregator.state import Checkpoint
from fedge.codec import FrameHeader, decode_frame, encode_frame
from fedge.config import AggregatorConfig
from fedge.messages import (
    DeviceStatus,
    RoundAnnouncement,
    RoundSummary,
    decode_message,
    encode_message,
)
from fedge.models import build_model, state_tensors, trainable_names
from fedge.spec import ModelSpec
from fedge.strategies import FedAvg
from fedge.topics import Topics

FLEET = "plant-7"
SPEC = ModelSpec(n_features=3, window=8, hidden=4, context="window")
T0 = 1_700_000_000.0
TOPICS = Topics(FLEET)
MAX_UPDATE = 32 * 1024

_MODEL = build_model(SPEC)
INITIAL_TENSORS = state_tensors(_MODEL)
TRAINABLE = trainable_names(_MODEL)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("FEDGE_"):
            monkeypatch.delenv(name)
    yield


def make(*, stats_done: bool = True, version: int = 0, round_id: int = 0,
         **config: object) -> RoundCoordinator:
    settings: dict[str, object] = {
        "fleet": FLEET,
        "rounds": 2,
        "min_clients": 2,
        "model": SPEC,
        "round_timeout_s": 60.0,
        "max_update_bytes": MAX_UPDATE,
    }
    settings.update(config)
    initial = Checkpoint(
        fleet=FLEET,
        version=version,
        round_id=round_id,
        spec=SPEC,
        tensors={k: v.copy() for k, v in INITIAL_TENSORS.items()},
        stats_done=stats_done,
    )
    return RoundCoordinator(
        AggregatorConfig(**settings),  # type: ignore[arg-type]
        strategy=FedAvg(),
        initial=initial,
        trainable=TRAINABLE,
    )


def status(device: str, state: str = "online", fleet: str = FLEET) -> bytes:
    return encode_message(DeviceStatus(fleet=fleet, device=device, state=state, ts=T0))  # type: ignore[arg-type]


def online(coord: RoundCoordinator, *devices: str, now: float = T0) -> list[Effect]:
    effects: list[Effect] = []
    for device in devices:
        effects += coord.handle(TOPICS.status(device), status(device), now)
    return effects


def frame(device: str, round_id: int, tensors: dict[str, np.ndarray], *, kind: str = "update",
          base_version: int = 0, num_examples: int = 10,
          metrics: dict[str, float] | None = None) -> bytes:
    header = FrameHeader(
        kind=kind,  # type: ignore[arg-type]
        fleet=FLEET,
        device=device,
        round_id=round_id,
        base_version=base_version,
        num_examples=num_examples,
        metrics=metrics or {},
        created_at=T0,
    )
    return encode_frame(header, tensors)


def shifted(delta: float) -> dict[str, np.ndarray]:
    """The trainable tensors of the initial model, each moved by ``delta``."""
    return {k: (INITIAL_TENSORS[k] + np.float32(delta)).astype(np.float32) for k in TRAINABLE}


def visible(effects: Sequence[Effect]) -> list[Effect]:
    """The effects without the journal's (tests/unit/test_journal_resume.py checks those)."""
    return [e for e in effects if not isinstance(e, JournalOpen | JournalUpdate | JournalClose)]


def reply(coord: RoundCoordinator, device: str, payload: bytes, now: float = T0 + 1,
          round_id: int | None = None) -> list[Effect]:
    """Send a reply; its effects other than the journal's. An accepted reply's first
    effect is always its JournalUpdate."""
    assert coord.open is not None or round_id is not None
    rid = coord.open.expect.round_id if round_id is None else round_id  # type: ignore[union-attr]
    topic = TOPICS.update(rid, device)
    effects = coord.handle(topic, payload, now)
    journaled = [e for e in effects if isinstance(e, JournalUpdate)]
    assert journaled in ([], [JournalUpdate(rid, topic, payload)])
    assert not journaled or effects[0] == journaled[0]
    return visible(effects)


def three_expected(coord: RoundCoordinator) -> int:
    """Bring three devices online and return the id of a round that expects all three.

    A round opens as soon as ``min_clients`` (2) are online and expects exactly those;
    the third device joins the round after the first one times out.
    """
    first = announcement(online(coord, "pump-01", "pump-02", "pump-03"))
    assert coord.open is not None
    assert coord.open.expected == {"pump-01", "pump-02"}
    second = announcement(coord.tick(first.deadline))
    assert coord.open is not None
    assert coord.open.expected == {"pump-01", "pump-02", "pump-03"}
    return second.round_id


def publishes(effects: Sequence[Effect], topic: str) -> list[Publish]:
    return [e for e in effects if isinstance(e, Publish) and e.topic == topic]


def announcement(effects: Sequence[Effect]) -> RoundAnnouncement:
    (pub,) = publishes(effects, TOPICS.round_current)
    assert pub.retain is True
    assert pub.qos == 1
    return decode_message(RoundAnnouncement, pub.payload)


def summary(effects: Sequence[Effect]) -> RoundSummary:
    (pub,) = publishes(effects, TOPICS.round_summary)
    assert pub.retain is False
    decoded = decode_message(RoundSummary, pub.payload)
    (closed,) = [e for e in effects if isinstance(e, RoundClosed)]
    assert closed.summary == decoded
    return decoded


# Waiting for the quorum --------------------------------------------------------------------


def test_no_round_until_min_clients_online() -> None:
    coord = make()
    assert coord.start(T0) != []  # stats done: re-publishes the global model (below)
    assert online(coord, "pump-01") == []
    assert coord.phase is Phase.WAITING
    assert coord.tick(T0 + 1000) == []
    effects = online(coord, "pump-02", now=T0 + 5)
    ann = announcement(effects)
    assert ann == RoundAnnouncement(
        fleet=FLEET, round_id=1, task="train", base_version=0, issued_at=T0 + 5,
        deadline=T0 + 65, min_clients=2, max_update_bytes=MAX_UPDATE, model=SPEC,
    )
    assert coord.phase is Phase.COLLECTING
    assert coord.open is not None
    assert coord.open.expected == {"pump-01", "pump-02"}


def test_start_publishes_the_global_model_only_after_stats() -> None:
    assert make(stats_done=False, round_id=-1).start(T0) == []
    (pub,) = make(version=4, round_id=9).start(T0)
    assert isinstance(pub, Publish)
    assert pub.topic == "fedge/v1/plant-7/model/global"
    assert pub.retain is True
    got = decode_frame(pub.payload)
    assert got.header.kind == "global"
    assert got.header.version == 4
    assert got.header.round_id == 9
    assert got.header.model == SPEC
    assert set(got.tensors) == set(INITIAL_TENSORS)


def test_offline_and_foreign_statuses_do_not_count() -> None:
    coord = make(allowed_devices=frozenset({"pump-01", "pump-02"}))
    assert coord.handle(TOPICS.status("pump-01"), status("pump-01"), T0) == []
    # Device name in the payload does not match the topic.
    assert coord.handle(TOPICS.status("pump-02"), status("pump-09"), T0) == []
    # Wrong fleet in the payload.
    assert coord.handle(TOPICS.status("pump-02"), status("pump-02", fleet="other"), T0) == []
    # Not on the allow list.
    assert coord.handle(TOPICS.status("rogue"), status("rogue"), T0) == []
    # Not JSON.
    assert coord.handle(TOPICS.status("pump-02"), b"\x00garbage", T0) == []
    assert coord.phase is Phase.WAITING
    assert set(coord.online) == {"pump-01"}
    assert coord.rejected_total == {"topic_mismatch": 2, "unknown_device": 1, "malformed": 1}
    assert announcement(online(coord, "pump-02")).round_id == 1


def test_non_fleet_topics_are_counted_and_ignored() -> None:
    coord = make()
    assert coord.handle("something/else", b"x", T0) == []
    assert coord.handle("fedge/v1/plant-7/devices/pump-01/telemetry", b"{}", T0) == []
    assert coord.rejected_total == {"malformed": 1}


# Stats round -------------------------------------------------------------------------------


def stats(count: float, total: list[float], sumsq: list[float]) -> dict[str, np.ndarray]:
    return {
        "count": np.array([count], np.float64),
        "sum": np.array(total, np.float64),
        "sumsq": np.array(sumsq, np.float64),
    }


def test_stats_round_sets_normalisation_and_publishes_version_0() -> None:
    coord = make(stats_done=False, round_id=-1)
    ann = announcement(online(coord, "pump-01", "pump-02"))
    assert (ann.round_id, ann.task, ann.base_version) == (0, "stats", 0)
    # Device A saw feature rows (1,1,2) and (1,3,4); device B saw (3,2,2) and (3,2,4):
    #   feature 0: 1,1,3,3 -> mean 2, var 1;  feature 1: 1,3,2,2 -> mean 2, var 0.5;
    #   feature 2: 2,4,2,4 -> mean 3, var 1.
    a = frame("pump-01", 0, stats(2, [2, 4, 6], [2, 10, 20]), kind="stats", num_examples=2)
    b = frame("pump-02", 0, stats(2, [6, 4, 6], [18, 8, 20]), kind="stats", num_examples=2)
    assert reply(coord, "pump-01", a) == []
    effects = reply(coord, "pump-02", b, now=T0 + 3)

    (glob,) = publishes(effects, TOPICS.global_model)
    assert glob.retain is True
    got = decode_frame(glob.payload)
    assert got.header.kind == "global"
    assert got.header.version == 0
    assert got.header.round_id == 0
    assert got.header.num_examples == 4
    np.testing.assert_allclose(got.tensors["input_mean"], [2.0, 2.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(got.tensors["input_std"], [1.0, math.sqrt(0.5), 1.0], rtol=1e-6)
    assert got.tensors["input_mean"].dtype == np.float32
    # Stats do not touch the trainable weights.
    for name in TRAINABLE:
        np.testing.assert_array_equal(got.tensors[name], INITIAL_TENSORS[name])

    (save,) = [e for e in effects if isinstance(e, SaveCheckpoint)]
    assert save.checkpoint.stats_done is True
    assert save.checkpoint.version == 0
    assert save.checkpoint.round_id == 0
    np.testing.assert_allclose(save.checkpoint.tensors["input_mean"], [2.0, 2.0, 3.0])

    s = summary(effects)
    assert (s.task, s.outcome, s.participants, s.num_examples, s.version) == (
        "stats", "completed", 2, 4, 0,
    )
    assert s.bytes_received == len(a) + len(b)
    assert s.duration_s == 3.0

    nxt = announcement(effects)
    assert (nxt.round_id, nxt.task, nxt.base_version) == (1, "train", 0)
    assert coord.stats_done is True
    # Effects come in the order the service must carry them out: the checkpoint before
    # the model the fleet sees (the journal's effects are checked in test_journal_resume).
    assert [type(e).__name__ for e in effects] == [
        "SaveCheckpoint", "Publish", "Publish", "RoundClosed", "Publish",
    ]


def test_stats_std_has_a_floor_for_constant_features() -> None:
    coord = make(stats_done=False, round_id=-1)
    online(coord, "pump-01", "pump-02")
    reply(coord, "pump-01", frame("pump-01", 0, stats(2, [10, 0, 2], [50, 0, 2]), kind="stats",
                                  num_examples=2))
    effects = reply(coord, "pump-02", frame("pump-02", 0, stats(1, [5, 0, 1], [25, 0, 1]),
                                            kind="stats", num_examples=1))
    got = decode_frame(publishes(effects, TOPICS.global_model)[0].payload)
    np.testing.assert_allclose(got.tensors["input_mean"], [5.0, 0.0, 1.0])
    np.testing.assert_allclose(got.tensors["input_std"], [1e-6, 1e-6, 1e-6])


def test_stats_reply_with_wrong_shape_is_rejected() -> None:
    coord = make(stats_done=False, round_id=-1)
    online(coord, "pump-01", "pump-02")
    bad = frame("pump-01", 0, stats(2, [1, 2], [1, 2]), kind="stats", num_examples=2)
    assert reply(coord, "pump-01", bad) == []
    assert coord.rejected_total == {"shape_mismatch": 1}


def test_history_stats_round_summarises_sensors_and_age() -> None:
    spec = ModelSpec(n_features=2, window=8, hidden=4, context="history")
    model = build_model(spec)
    coord = RoundCoordinator(
        AggregatorConfig(fleet=FLEET, rounds=1, min_clients=2, model=spec),
        strategy=FedAvg(),
        initial=Checkpoint(fleet=FLEET, version=0, round_id=-1, spec=spec,
                           tensors=state_tensors(model), stats_done=False),
        trainable=trainable_names(model),
    )
    ann = announcement(online(coord, "pump-01", "pump-02"))
    assert ann.task == "stats" and ann.model == spec  # the agents learn what to summarise
    # Rows are [sensor 0, sensor 1, age]; a sensors-only reply no longer fits.
    short = frame("pump-01", 0, stats(2, [2, 4], [2, 10]), kind="stats", num_examples=2)
    assert reply(coord, "pump-01", short) == []
    assert coord.rejected_total == {"shape_mismatch": 1}
    a = frame("pump-01", 0, stats(2, [2, 4, 3], [2, 10, 5]), kind="stats", num_examples=2)
    b = frame("pump-02", 0, stats(2, [6, 4, 3], [18, 8, 5]), kind="stats", num_examples=2)
    assert reply(coord, "pump-01", a) == []
    effects = reply(coord, "pump-02", b)
    got = decode_frame(publishes(effects, TOPICS.global_model)[0].payload)
    np.testing.assert_allclose(got.tensors["input_mean"], [2.0, 2.0, 1.5])
    np.testing.assert_allclose(got.tensors["input_std"], [1.0, math.sqrt(0.5), 0.5])


# Train rounds ------------------------------------------------------------------------------


def test_train_round_fedavg_result() -> None:
    coord = make()
    online(coord, "pump-01", "pump-02")
    # 10 and 30 examples: weights 1/4 and 3/4; +1 and -3 average to -2.
    a = frame("pump-01", 1, shifted(+1.0), num_examples=10,
              metrics={"train_loss": 0.5, "val_rmse": 5.0, "val_examples": 1})
    b = frame("pump-02", 1, shifted(-3.0), num_examples=30,
              metrics={"train_loss": 0.3, "val_rmse": 1.0, "val_examples": 2})
    assert reply(coord, "pump-01", a, now=T0 + 10) == []
    assert coord.version == 0
    effects = reply(coord, "pump-02", b, now=T0 + 20)

    assert coord.version == 1
    for name in TRAINABLE:
        np.testing.assert_allclose(coord.tensors[name], INITIAL_TENSORS[name] - 2.0,
                                   rtol=1e-5, atol=1e-5)
    for name in ("input_mean", "input_std"):
        np.testing.assert_array_equal(coord.tensors[name], INITIAL_TENSORS[name])

    (glob,) = publishes(effects, TOPICS.global_model)
    got = decode_frame(glob.payload)
    assert (got.header.version, got.header.base_version, got.header.round_id) == (1, 0, 1)
    assert got.header.num_examples == 40
    np.testing.assert_allclose(got.tensors["rul_head.bias"], INITIAL_TENSORS["rul_head.bias"] - 2,
                               rtol=1e-5)

    (save,) = [e for e in effects if isinstance(e, SaveCheckpoint)]
    assert (save.checkpoint.version, save.checkpoint.round_id) == (1, 1)
    assert save.checkpoint.fleet == FLEET
    assert save.checkpoint.spec == SPEC
    np.testing.assert_array_equal(save.checkpoint.tensors["dense.2.weight"],
                                  coord.tensors["dense.2.weight"])

    s = summary(effects)
    assert s.fleet == FLEET
    assert (s.round_id, s.task, s.outcome, s.version) == (1, "train", "completed", 1)
    assert s.participants == 2
    assert s.num_examples == 40
    assert s.train_loss == pytest.approx((0.5 * 10 + 0.3 * 30) / 40)  # 0.35
    # sqrt((5^2 * 1 + 1^2 * 2) / 3) = sqrt(27 / 3) = 3
    assert s.val_error == pytest.approx(3.0)
    assert s.val_examples == 3
    assert s.rejected == 0
    assert s.rejected_by_reason == {}
    assert s.bytes_received == len(a) + len(b)
    assert s.duration_s == 20.0
    assert s.ts == T0 + 20

    nxt = announcement(effects)
    assert (nxt.round_id, nxt.task, nxt.base_version) == (2, "train", 1)
    assert list(coord.history) == [s]


def test_full_lifecycle_ends_with_evaluation() -> None:
    coord = make()
    online(coord, "pump-01", "pump-02")
    for round_id, base in ((1, 0), (2, 1)):
        reply(coord, "pump-01", frame("pump-01", round_id, shifted(1.0), base_version=base))
        effects = reply(coord, "pump-02", frame("pump-02", round_id, shifted(1.0),
                                                base_version=base))
    assert coord.version == 2
    ev = announcement(effects)
    assert (ev.round_id, ev.task, ev.base_version) == (3, "evaluate", 2)
    reply(coord, "pump-01", frame("pump-01", 3, {}, kind="evaluation", base_version=2,
                                  num_examples=3, metrics={"rmse": 2.0}))
    effects = reply(coord, "pump-02", frame("pump-02", 3, {}, kind="evaluation", base_version=2,
                                            num_examples=1, metrics={"rmse": 6.0}))
    s = summary(effects)
    assert (s.task, s.outcome, s.version) == ("evaluate", "completed", 2)
    assert s.val_error == pytest.approx(math.sqrt((4.0 * 3 + 36.0 * 1) / 4))  # sqrt(12)
    assert s.val_examples == 4
    assert not publishes(effects, TOPICS.round_current)
    assert not [e for e in effects if isinstance(e, SaveCheckpoint)]
    assert coord.finished
    assert coord.tick(T0 + 10_000) == []
    assert [h.task for h in coord.history] == ["train", "train", "evaluate"]


def test_target_clients_closes_early() -> None:
    coord = make(target_clients=2)
    online(coord, "pump-01", "pump-02", "pump-03")
    assert reply(coord, "pump-01", frame("pump-01", 1, shifted(1.0))) == []
    effects = reply(coord, "pump-02", frame("pump-02", 1, shifted(1.0)))
    assert summary(effects).participants == 2
    assert coord.version == 1


# Deadlines and devices leaving -------------------------------------------------------------


def test_deadline_with_too_few_replies_fails_and_reannounces() -> None:
    coord = make()
    online(coord, "pump-01", "pump-02")
    reply(coord, "pump-01", frame("pump-01", 1, shifted(5.0)))
    assert coord.tick(T0 + 59.9) == []
    effects = coord.tick(T0 + 60)
    s = summary(effects)
    assert (s.round_id, s.outcome, s.participants, s.version) == (1, "failed", 1, 0)
    assert not publishes(effects, TOPICS.global_model)
    assert not [e for e in effects if isinstance(e, SaveCheckpoint)]
    nxt = announcement(effects)
    assert nxt.round_id == 2
    assert nxt.base_version == 0
    assert nxt.task == "train"
    assert nxt.deadline == T0 + 120
    assert coord.version == 0
    for name in TRAINABLE:  # the lone update was not applied
        np.testing.assert_array_equal(coord.tensors[name], INITIAL_TENSORS[name])


def test_deadline_with_no_replies() -> None:
    coord = make()
    online(coord, "pump-01", "pump-02")
    effects = coord.tick(T0 + 61)
    assert summary(effects).participants == 0
    assert summary(effects).outcome == "failed"
    assert announcement(effects).round_id == 2


def test_device_joining_mid_round_is_not_waited_for() -> None:
    coord = make()
    online(coord, "pump-01", "pump-02")
    online(coord, "pump-03")
    reply(coord, "pump-01", frame("pump-01", 1, shifted(1.0)))
    effects = reply(coord, "pump-02", frame("pump-02", 1, shifted(1.0)))
    assert summary(effects).outcome == "completed"
    assert coord.open is not None
    assert coord.open.expected == {"pump-01", "pump-02", "pump-03"}  # in the next round


def test_late_reply_for_a_closed_round_is_rejected() -> None:
    coord = make()
    online(coord, "pump-01", "pump-02")
    coord.tick(T0 + 60)  # round 1 fails, round 2 opens
    effects = coord.handle(TOPICS.update(1, "pump-01"), frame("pump-01", 1, shifted(1.0)),
                           T0 + 61)
    assert effects == []
    assert coord.rejected_total == {"late": 1}


def test_device_going_offline_stops_the_round_waiting_for_it() -> None:
    coord = make()
    rid = three_expected(coord)
    now = T0 + 60
    assert reply(coord, "pump-01", frame("pump-01", rid, shifted(1.0)), now=now + 1) == []
    assert reply(coord, "pump-02", frame("pump-02", rid, shifted(3.0)), now=now + 2) == []
    assert coord.phase is Phase.COLLECTING  # still waiting for pump-03
    effects = coord.handle(TOPICS.status("pump-03"), status("pump-03", "offline"), now + 5)
    s = summary(effects)
    assert (s.round_id, s.outcome, s.participants, s.version) == (rid, "completed", 2, 1)
    assert s.duration_s == 5.0
    assert set(coord.online) == {"pump-01", "pump-02"}
    assert announcement(effects).round_id == rid + 1
    assert coord.open is not None
    assert coord.open.expected == {"pump-01", "pump-02"}


def test_offline_below_quorum_fails_and_waits() -> None:
    coord = make()
    online(coord, "pump-01", "pump-02")
    reply(coord, "pump-01", frame("pump-01", 1, shifted(1.0)))
    effects = coord.handle(TOPICS.status("pump-02"), status("pump-02", "offline"), T0 + 2)
    assert summary(effects).outcome == "failed"
    assert not publishes(effects, TOPICS.round_current)  # one device left: no quorum
    assert coord.phase is Phase.WAITING
    ann = announcement(online(coord, "pump-02", now=T0 + 30))
    assert (ann.round_id, ann.base_version) == (2, 0)


# Rejections --------------------------------------------------------------------------------


def test_rejected_replies_are_counted_and_never_raise() -> None:
    coord = make()
    rid = three_expected(coord)
    good_a = frame("pump-01", rid, shifted(1.0), num_examples=10)
    nan = shifted(0.0)
    nan["conv.0.bias"] = np.array([0.0, np.nan, 0.0, 0.0], np.float32)
    inf = shifted(0.0)
    inf["rul_head.bias"] = np.array([np.inf], np.float32)
    bad: list[tuple[str, bytes, str]] = [
        ("pump-01", frame("pump-01", rid, shifted(2.0)), "replay"),
        ("pump-02", frame("pump-02", rid, shifted(1.0), base_version=7), "stale_base"),
        ("pump-02", b"\x00" * (MAX_UPDATE + 1), "too_large"),
        ("pump-02", frame("pump-02", rid, nan), "non_finite"),
        ("pump-02", frame("pump-02", rid, inf), "non_finite"),
        ("pump-02", b"definitely not a frame", "malformed"),
        ("pump-02", b"", "malformed"),
        ("pump-02", frame("pump-02", rid, shifted(1.0), num_examples=0), "bad_examples"),
        ("pump-02", frame("pump-02", rid, {**shifted(1.0), "extra": np.zeros(1, np.float32)}),
         "unexpected_tensor"),
        ("pump-02", frame("pump-02", rid, shifted(1.0), kind="evaluation"), "malformed"),
    ]
    assert reply(coord, "pump-01", good_a) == []
    assert reply(coord, "pump-01", good_a) == []  # the same bytes again: a duplicate
    assert coord.duplicates_total == 1
    for device, payload, _ in bad:
        assert reply(coord, device, payload) == []
    # A reply from pump-03 published on pump-02's topic.
    assert coord.handle(TOPICS.update(rid, "pump-02"), frame("pump-03", rid, shifted(1.0)),
                        T0 + 61) == []
    assert coord.phase is Phase.COLLECTING
    expected = {"replay": 1, "stale_base": 1, "too_large": 1, "non_finite": 2, "malformed": 3,
                "bad_examples": 1, "unexpected_tensor": 1, "topic_mismatch": 1}
    assert dict(coord.rejected_total) == expected

    good_b = frame("pump-02", rid, shifted(-3.0), num_examples=30)
    assert reply(coord, "pump-02", good_b) == []
    effects = coord.handle(TOPICS.status("pump-03"), status("pump-03", "offline"), T0 + 69)
    s = summary(effects)
    assert s.outcome == "completed"
    assert s.participants == 2
    assert s.num_examples == 40
    assert s.rejected == 11
    assert s.rejected_by_reason == expected
    # Only the two good updates were averaged: (10 * +1 + 30 * -3) / 40 = -2.
    for name in TRAINABLE:
        np.testing.assert_allclose(coord.tensors[name], INITIAL_TENSORS[name] - 2.0,
                                   rtol=1e-5, atol=1e-5)


def test_reply_with_no_open_round_is_counted() -> None:
    coord = make()
    assert coord.handle(TOPICS.update(1, "pump-01"), frame("pump-01", 1, shifted(1.0)), T0) == []
    assert coord.handle(TOPICS.update(1, "pump-01"), b"garbage", T0) == []
    assert coord.rejected_total == {"wrong_round": 1, "malformed": 1}
    assert coord.phase is Phase.WAITING


def test_reply_for_another_round_id() -> None:
    coord = make()
    online(coord, "pump-01", "pump-02")
    payload = frame("pump-01", 99, shifted(1.0))
    assert reply(coord, "pump-01", payload, round_id=99) == []
    assert coord.rejected_total == {"wrong_round": 1}
    assert coord.open is not None
    assert coord.open.rejected == {"wrong_round": 1}


def test_unknown_device_update_is_rejected() -> None:
    coord = make(allowed_devices=frozenset({"pump-01", "pump-02"}))
    online(coord, "pump-01", "pump-02")
    assert reply(coord, "rogue", frame("rogue", 1, shifted(1.0))) == []
    assert coord.rejected_total == {"unknown_device": 1}


def _bf16_frame() -> bytes:
    header = FrameHeader(kind="update", fleet=FLEET, device="pump-01", round_id=1,
                         base_version=0, num_examples=1, created_at=T0)
    header_json = header.model_dump_json(exclude_none=True).encode()
    meta = json.dumps({"x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    body = struct.pack("<Q", len(meta)) + meta + b"\x00" * 4
    return b"FEDG\x01\x00" + struct.pack(">I", len(header_json)) + header_json + body


def test_bf16_body_is_counted_not_raised() -> None:
    coord = make()
    online(coord, "pump-01", "pump-02")
    assert reply(coord, "pump-01", _bf16_frame()) == []
    assert coord.rejected_total == {"malformed": 1}


def test_status_on_another_fleets_topic_is_ignored() -> None:
    coord = make()
    online(coord, "pump-01")
    foreign = Topics("plant-8").status("pump-02")
    assert coord.handle(foreign, status("pump-02"), T0) == []
    assert set(coord.online) == {"pump-01"}
