"""RoundCoordinator in security mode ``verify``: only verified devices are online or
counted, every refusal has its reason; decline frames are counted and not waited for."""

from __future__ import annotations

import numpy as np

from aggregator.coordinator import Publish, RoundClosed, RoundCoordinator
from aggregator.state import Checkpoint
from fedge.codec import FrameHeader, encode_frame
from fedge.config import AggregatorConfig
from fedge.messages import DeviceStatus, RoundAnnouncement, decode_message, encode_message
from fedge.models import build_model, state_tensors, trainable_names
from fedge.signing import Authenticator, KeyRegistry, SigningKey, sign_frame, sign_message
from fedge.spec import ModelSpec
from fedge.strategies import FedAvg
from fedge.topics import Topics

FLEET = "plant-7"
SPEC = ModelSpec(n_features=3, window=8, hidden=4, context="window")
T0 = 1_700_000_000.0
TOPICS = Topics(FLEET)
PUMP_1 = SigningKey.from_seed(bytes(range(32)), signer="pump-1")
PUMP_2 = SigningKey.from_seed(bytes(range(1, 33)), signer="pump-2")
GHOST = SigningKey.from_seed(bytes(range(2, 34)), signer="ghost")
AGGREGATOR = SigningKey.from_seed(bytes(range(100, 132)), signer="aggregator")
REGISTRY = KeyRegistry(
    AGGREGATOR.verify_key, {"pump-1": PUMP_1.verify_key, "pump-2": PUMP_2.verify_key}
)
_MODEL = build_model(SPEC)
TENSORS = state_tensors(_MODEL)
TRAINABLE = trainable_names(_MODEL)
KEYS = {"pump-1": PUMP_1, "pump-2": PUMP_2, "ghost": GHOST}


def make(*, verify: bool = True) -> RoundCoordinator:
    return RoundCoordinator(
        AggregatorConfig(fleet=FLEET, rounds=2, min_clients=2, model=SPEC, round_timeout_s=60.0),
        strategy=FedAvg(),
        initial=Checkpoint(
            fleet=FLEET,
            version=0,
            round_id=0,
            spec=SPEC,
            tensors={k: v.copy() for k, v in TENSORS.items()},
            stats_done=True,
        ),
        trainable=TRAINABLE,
        authenticator=Authenticator("verify", REGISTRY) if verify else None,
    )


def status(device: str, state: str = "online", *, at: float = T0, key: str | None = None) -> bytes:
    payload = encode_message(DeviceStatus(fleet=FLEET, device=device, state=state, ts=at))  # type: ignore[arg-type]
    signer = KEYS[key or device]
    return sign_message(payload, signer, TOPICS.status(device), now=at)


def update(device: str, round_id: int, *, kind: str = "update", **header: object) -> bytes:
    head = FrameHeader.model_validate(
        {
            "kind": kind,
            "fleet": FLEET,
            "device": device,
            "round_id": round_id,
            "base_version": 0,
            "num_examples": 0 if kind == "decline" else 10,
            "created_at": T0,
            **header,
        }
    )
    tensors = {} if kind == "decline" else {k: TENSORS[k] + 0.1 for k in TRAINABLE}
    frame = encode_frame(head, tensors)
    return sign_frame(frame, KEYS[device], TOPICS.update(round_id, device))


def announced(effects: list[object]) -> RoundAnnouncement:
    (publish,) = [e for e in effects if isinstance(e, Publish) and e.topic == TOPICS.round_current]
    return decode_message(RoundAnnouncement, publish.payload)


def test_fake_status_of_an_unknown_device_never_makes_it_online() -> None:
    coord = make()
    coord.handle(TOPICS.status("ghost"), status("ghost"), T0)
    unsigned = encode_message(DeviceStatus(fleet=FLEET, device="pump-1", state="online", ts=T0))
    coord.handle(TOPICS.status("pump-1"), unsigned, T0)
    coord.handle(TOPICS.status("pump-1"), status("pump-1", key="pump-2"), T0)  # wrong signer
    assert coord.online == {}
    assert dict(coord.rejected_total) == {
        "unknown_device": 1,
        "unsigned": 1,
        "wrong_signer": 1,
    }
    # Two real devices open the round, and only they are expected.
    coord.handle(TOPICS.status("pump-1"), status("pump-1"), T0)
    effects = coord.handle(TOPICS.status("pump-2"), status("pump-2"), T0)
    assert announced(effects).round_id == 1
    assert coord.open is not None and coord.open.expected == {"pump-1", "pump-2"}


def test_in_mode_off_the_same_fake_status_counts() -> None:
    coord = make(verify=False)
    coord.handle(TOPICS.status("ghost"), status("ghost"), T0)
    assert set(coord.online) == {"ghost"}  # why verify exists


def test_old_online_status_cannot_be_replayed() -> None:
    coord = make()
    old = status("pump-1", at=T0)
    coord.handle(TOPICS.status("pump-1"), status("pump-1", at=T0 + 10), T0 + 10)
    coord.handle(TOPICS.status("pump-1"), status("pump-1", "offline", at=T0), T0 + 11)
    assert coord.online == {}  # the will (signed at connect time, older) is taken
    coord.handle(TOPICS.status("pump-1"), old, T0 + 12)
    assert coord.online == {} and coord.rejected_total["stale"] == 1
    # A recorded online replayed long after: too old, whatever came before.
    fresh = make()
    fresh.handle(TOPICS.status("pump-1"), old, T0 + 301)
    assert fresh.online == {} and fresh.rejected_total["stale"] == 1


def test_forged_and_foreign_updates_are_refused_before_decoding() -> None:
    coord = make()
    coord.handle(TOPICS.status("pump-1"), status("pump-1"), T0)
    coord.handle(TOPICS.status("pump-2"), status("pump-2"), T0)
    good = update("pump-1", 1)
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    coord.handle(TOPICS.update(1, "pump-1"), tampered, T0 + 1)
    coord.handle(TOPICS.update(1, "pump-2"), good, T0 + 1)  # pump-1's frame on pump-2's topic
    unsigned = encode_frame(
        FrameHeader(
            kind="update",
            fleet=FLEET,
            device="pump-2",
            round_id=1,
            base_version=0,
            num_examples=10,
            created_at=T0,
        ),
        {k: TENSORS[k] for k in TRAINABLE},
    )
    coord.handle(TOPICS.update(1, "pump-2"), unsigned, T0 + 1)
    assert coord.open is not None and coord.open.received == set()
    assert dict(coord.open.rejected) == {"bad_signature": 1, "wrong_signer": 1, "unsigned": 1}
    coord.handle(TOPICS.update(1, "pump-1"), good, T0 + 2)
    assert coord.open.received == {"pump-1"}


def test_a_decline_is_counted_under_its_reason_and_not_waited_for() -> None:
    coord = make()
    coord.handle(TOPICS.status("pump-1"), status("pump-1"), T0)
    coord.handle(TOPICS.status("pump-2"), status("pump-2"), T0)
    decline = update("pump-2", 1, kind="decline", reason="model_refused", detail="worse")
    # Journaled like any accepted reply (a restarted aggregator does not wait for it).
    effects = coord.handle(TOPICS.update(1, "pump-2"), decline, T0 + 1)
    assert [type(e).__name__ for e in effects] == ["JournalUpdate"]
    assert coord.open is not None and coord.open.expected == {"pump-1"}
    # The same decline again is a QoS 1 redelivery: counted once, as a duplicate.
    coord.handle(TOPICS.update(1, "pump-2"), decline, T0 + 1)
    assert coord.open.duplicates == 1
    effects = coord.handle(TOPICS.update(1, "pump-1"), update("pump-1", 1), T0 + 2)
    (closed,) = [e for e in effects if isinstance(e, RoundClosed)]
    # Closed at once (not at the deadline), failed: min_clients is 2, one device counted.
    assert closed.summary.duration_s == 2.0
    assert closed.summary.participants == 1 and closed.summary.outcome == "failed"
    assert closed.summary.rejected_by_reason == {"model_refused": 1}
    assert coord.rejected_total["model_refused"] == 1
    assert "malformed" not in coord.rejected_total


def test_a_decline_for_another_round_is_wrong_round_not_malformed() -> None:
    coord = make()
    coord.handle(TOPICS.status("pump-1"), status("pump-1"), T0)
    coord.handle(TOPICS.status("pump-2"), status("pump-2"), T0)
    coord.handle(TOPICS.update(7, "pump-2"), update("pump-2", 7, kind="decline", reason="x"), T0)
    assert coord.open is not None and coord.open.expected == {"pump-1", "pump-2"}
    assert dict(coord.open.rejected) == {"wrong_round": 1}
    np.testing.assert_array_equal(coord.tensors[TRAINABLE[0]], TENSORS[TRAINABLE[0]])
