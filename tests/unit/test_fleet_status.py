"""fedge status's fold of a fleet's messages, with literal payloads (no broker)."""

from __future__ import annotations

from rich.console import Console

from fedge.codec import FrameHeader, encode_frame
from fedge.messages import DeviceStatus, Prediction, RoundAnnouncement, encode_message
from fedge.topics import Topics
from fedge.transport import InboundMessage
from fedge_app.fleet_status import FleetSnapshot
from fedge_app.status_views import fleet_table

T0 = 1_700_000_000.0
FLEET = "plant-7"
TOPICS = Topics(FLEET)


def msg(topic: str, payload: bytes) -> InboundMessage:
    return InboundMessage(topic, payload, retain=True)


def status(device: str, state: str, **fields: object) -> InboundMessage:
    body = DeviceStatus(fleet=FLEET, device=device, state=state, **fields)  # type: ignore[arg-type]
    return msg(TOPICS.status(device), encode_message(body))


def prediction(device: str, rul: float, *, alert: bool = False) -> InboundMessage:
    body = Prediction(fleet=FLEET, device=device, ts=T0 + 9, model_version=4, rul=rul,
                      failure_probability=0.25, horizon=30, alert=alert)
    return msg(TOPICS.prediction(device), encode_message(body))


def snapshot() -> FleetSnapshot:
    snap = FleetSnapshot(FLEET)
    snap.add(status("pump-a", "online", ts=T0, model_version=4, buffer_depth=12,
                    source_state="ok"))
    snap.add(status("pump-b", "online", ts=T0, model_version=3, last_error="refused v4"))
    snap.add(status("pump-c", "online", ts=T0))
    snap.add(status("pump-c", "offline"))  # its will, after it died
    header = FrameHeader(kind="global", fleet=FLEET, round_id=9, base_version=3, version=4)
    snap.add(msg(TOPICS.global_model, encode_frame(header, {})))
    ann = RoundAnnouncement(fleet=FLEET, round_id=10, base_version=4, issued_at=T0,
                            deadline=T0 + 60, min_clients=2, selected=["pump-a", "pump-b"])
    snap.add(msg(TOPICS.round_current, encode_message(ann)))
    return snap


def test_statuses_wills_model_and_round_fold_into_one_entry_per_device() -> None:
    data = snapshot().to_json()
    assert data["global_model"] == {"version": 4, "round_id": 9}
    assert data["round"]["round_id"] == 10 and data["round"]["selected"] == ["pump-a", "pump-b"]
    a, b, c = data["devices"]
    assert (a["device"], a["online"], a["model_version"], a["behind_global"]) == (
        "pump-a", True, 4, False)
    assert (a["buffer_depth"], a["source_state"], a["last_seen"]) == (12, "ok", T0)
    assert (b["model_version"], b["behind_global"], b["last_error"]) == (3, True, "refused v4")
    assert (c["state"], c["online"], c["behind_global"]) == ("offline", False, False)


def test_predictions_are_kept_per_device_and_complete_the_snapshot() -> None:
    snap = snapshot()
    assert not snap.complete
    snap.add(prediction("pump-a", 80.0))
    snap.add(prediction("pump-a", 12.0, alert=True))  # the latest one counts
    assert not snap.complete  # pump-b has not predicted yet
    snap.add(prediction("pump-b", 50.0))
    assert snap.complete  # pump-c is offline: not waited for
    data = snap.to_json()
    assert data["predictions_received"] == 3
    assert data["devices"][0]["prediction"]["rul"] == 12.0
    assert data["devices"][0]["prediction"]["alert"] is True
    assert data["devices"][2]["prediction"] is None


def test_bad_messages_are_counted_by_reason_not_raised() -> None:
    snap = FleetSnapshot(FLEET)
    snap.add(msg(TOPICS.status("pump-a"), b"{not json"))
    snap.add(msg(TOPICS.global_model, b"FEDGnope"))
    snap.add(msg(TOPICS.status("pump-z"), status("pump-b", "online").payload))  # on another's
    snap.add(msg("fedge/v1/other-fleet/model/global", b""))
    snap.add(msg("not/a/fedge/topic", b""))
    assert snap.statuses == {}
    assert snap.rejected == {"malformed": 5}


def test_the_table_shows_states_versions_buffers_and_alerts() -> None:
    snap = snapshot()
    snap.add(prediction("pump-a", 12.0, alert=True))
    console = Console(width=200, record=True)
    console.print(fleet_table(snap.to_json(), now=T0 + 30))
    text = console.export_text()
    assert "fleet plant-7: global model v4, round 10 (train)" in text
    row_a = next(line for line in text.splitlines() if "pump-a" in line)
    assert "online" in row_a and "30s ago" in row_a and " 12 " in row_a and "ALERT" in row_a
    row_b = next(line for line in text.splitlines() if "pump-b" in line)
    assert "v3 (not v4)" in row_b and "refused v4" in row_b
    assert "offline" in next(line for line in text.splitlines() if "pump-c" in line)
