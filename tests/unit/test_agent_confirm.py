"""EdgeAgent with ingest's stored-up-to acks, over the in-memory broker (a fake clock).

An ingest stand-in publishes retained StoredAcks on the device's ``stored`` topic; a
recorder sees which readings the agent (re-)sends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.sources import SimulatedSensorSource
from edge_agent.store import ReadingStore, TelemetryState
from fedge.config import AgentConfig
from fedge.data.simulator import SENSOR_NAMES, SiteProfile
from fedge.messages import DeviceStatus, StoredAck, TelemetryBatch, decode_message, encode_message
from fedge.topics import Topics
from fedge.transport import InboundMessage, InMemoryBroker, InMemoryTransport

FLEET = "unit"
DEVICE = "dev-1"
TOPICS = Topics(FLEET)
T0 = 1_750_000_000.0
UNSENT, SENT, STORED = TelemetryState.UNSENT, TelemetryState.SENT, TelemetryState.STORED


class Rig:
    """An agent, an ingest stand-in and a telemetry recorder on one in-memory broker."""

    def __init__(self, tmp_path: Path, **config: object) -> None:
        self.broker = InMemoryBroker()
        self.sent: list[int] = []
        self.batches: list[TelemetryBatch] = []
        recorder = self.broker.transport("recorder")
        recorder.connect(on_message=self._record)
        recorder.subscribe(TOPICS.telemetry(DEVICE))
        recorder.subscribe(TOPICS.status(DEVICE))
        self.statuses: list[DeviceStatus] = []
        self.ingest: InMemoryTransport = self.broker.transport("ingest")
        self.ingest.connect(on_message=lambda m: None)
        self.now = T0
        cfg = AgentConfig.model_validate(
            {
                "fleet": FLEET,
                "device": DEVICE,
                "store_path": tmp_path / "a.sqlite",
                "sample_interval_s": 0.0,  # readings come from self.sample()
                "telemetry_interval_s": 1.0,
                "status_interval_s": 3600.0,
                "background_training": False,
                "health_enabled": False,
                **config,
            }
        )
        self.agent = EdgeAgent(
            cfg,
            transport=self.broker.transport(DEVICE),
            source=SimulatedSensorSource(profile=SiteProfile(), seed=1),
            store=ReadingStore(cfg.store_path, n_features=len(SENSOR_NAMES)),
            clock=lambda: self.now,
        )
        self.agent.start()

    def _record(self, message: InboundMessage) -> None:
        if message.topic == TOPICS.status(DEVICE):
            self.statuses.append(decode_message(DeviceStatus, message.payload))
            return
        batch = decode_message(TelemetryBatch, message.payload)
        self.batches.append(batch)
        self.sent += [r.seq for r in batch.readings]

    def sample(self, n: int) -> None:
        for _ in range(n):
            self.now += 0.01
            self.agent._sample(self.now)

    def flush(self, seconds: float = 2.0) -> None:
        """Let ``seconds`` pass, one telemetry period (1 s) at a time: a batch goes out
        at one tick, its PUBACK is taken at the next."""
        end = self.now + seconds
        while self.now < end:
            self.now += 1.0
            self.agent.step()

    def ack(self, seq: int, *, device: str = DEVICE, fleet: str = FLEET) -> None:
        ts = self.ts(seq) if device == DEVICE else T0
        self.publish_ack(
            StoredAck(fleet=fleet, device=device, through_seq=seq, through_ts=ts, ts=self.now)
        )

    def publish_ack(self, ack: StoredAck | bytes) -> None:
        payload = ack if isinstance(ack, bytes) else encode_message(ack)
        self.ingest.publish(TOPICS.stored(DEVICE), payload, retain=True)
        self.agent.step()  # the agent takes it from its inbox

    def ts(self, seq: int) -> float:
        row = self.agent.store.db.execute("SELECT ts FROM readings WHERE seq = ?", (seq,))
        return float(row.fetchone()[0])

    def states(self) -> dict[int, int]:
        db = self.agent.store.db
        return dict(db.execute("SELECT seq, sent FROM readings ORDER BY seq").fetchall())

    def confirming(self) -> bool:
        return self.agent.confirm.active

    def close(self) -> None:
        self.agent.stop()
        self.agent.store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_readings_wait_for_the_ack_that_covers_them(rig: Rig) -> None:
    rig.sample(5)
    rig.flush()
    assert rig.sent == [1, 2, 3, 4, 5]
    assert set(rig.states().values()) == {SENT}  # the broker has them; ingest did not say
    assert not rig.confirming()
    rig.ack(3)
    assert rig.confirming()  # auto mode: the first ack switched it on
    assert rig.states() == {1: STORED, 2: STORED, 3: STORED, 4: SENT, 5: SENT}
    assert rig.agent.stats.stored_acks == 1
    rig.agent.publish_status()
    status = rig.statuses[-1]
    assert (status.buffer_depth, status.buffer_unconfirmed, status.confirmed_through_seq) == (
        0,
        2,
        3,
    )
    rig.close()


def test_an_ack_for_another_device_or_malformed_is_refused_and_counted(rig: Rig) -> None:
    rig.sample(3)
    rig.flush()
    rig.ack(3, device="dev-2")
    rig.ack(3, fleet="other")
    rig.publish_ack(b'{"fleet": "unit", "device": "dev-1"}')
    assert rig.agent.stats.refused == {"stored_ack_mismatch": 2, "malformed": 1}
    assert rig.agent.stats.rejected_messages == 3
    assert set(rig.states().values()) == {SENT}
    assert not rig.agent.confirm.active and rig.agent.store.stored_watermark() is None
    rig.ack(3)  # the agent carries on
    assert set(rig.states().values()) == {STORED}
    rig.close()


def test_a_backwards_ack_is_ignored_and_counted(rig: Rig) -> None:
    rig.sample(4)
    rig.flush()
    rig.ack(3)
    rig.ack(1)
    assert rig.agent.stats.refused == {"stored_ack_backwards": 1}
    assert rig.agent.stats.rejected_messages == 0  # benign: a stale retained ack
    assert rig.agent.store.stored_watermark() == (3, rig.ts(3))
    assert rig.states() == {1: STORED, 2: STORED, 3: STORED, 4: SENT}
    rig.close()


def test_after_a_reconnect_only_the_unconfirmed_readings_go_again(rig: Rig) -> None:
    rig.sample(6)
    rig.flush()
    rig.ack(4)
    rig.flush()
    assert rig.sent == [1, 2, 3, 4, 5, 6]  # the first connection had nothing to re-send
    rig.broker.reconnect(DEVICE)  # the retained ack comes again at once
    rig.sample(2)  # 7, 8: unsent at the reconnect
    rig.flush(3.0)  # notice the reconnect and re-send; then PUBACKs
    assert rig.sent == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]
    assert rig.agent.stats.telemetry_resent == 2
    rig.ack(8)
    assert set(rig.states().values()) == {STORED}
    rig.close()


def test_every_batch_says_what_the_agent_still_owes_ingest(rig: Rig) -> None:
    def owed() -> list[tuple[list[int], int | None, float | None]]:
        out = [
            ([r.seq for r in b.readings], b.unconfirmed_from_seq, b.unconfirmed_from_ts)
            for b in rig.batches
        ]
        rig.batches.clear()
        return out

    rig.sample(3)
    rig.flush()
    assert owed() == [([1, 2, 3], 1, rig.ts(1))]
    rig.ack(2)
    rig.sample(2)
    rig.flush()  # 3 is sent but not confirmed: still owed
    assert owed() == [([4, 5], 3, rig.ts(3))]
    rig.ack(5)
    rig.sample(1)
    rig.flush()
    assert owed() == [([6], 6, rig.ts(6))]
    # 6 not confirmed: re-sent with 7 once the retained ack (5) is in, at once here.
    rig.broker.reconnect(DEVICE)
    rig.sample(1)
    rig.flush(3.0)
    assert owed() == [([6, 7], 6, rig.ts(6))]
    rig.close()


def test_a_puback_not_taken_before_the_reconnect_is_resent_too(rig: Rig) -> None:
    rig.sample(4)
    rig.flush()
    rig.ack(2)
    rig.sample(2)
    rig.flush(1.0)  # 5, 6 published; their PUBACK is in, the store does not know yet
    assert rig.states()[5] == UNSENT
    rig.broker.reconnect(DEVICE)
    rig.flush(2.0)
    # The broker acknowledged 3-6 on the connection that broke: all of them go again.
    assert rig.sent == [1, 2, 3, 4, 5, 6, 3, 4, 5, 6]
    rig.close()


def test_after_a_restart_readings_left_unconfirmed_go_again(tmp_path: Path) -> None:
    first = Rig(tmp_path)
    first.sample(4)
    first.flush()
    first.ack(2)
    first.close()  # 3 and 4: acknowledged by the broker, never confirmed
    second = Rig(tmp_path)
    assert second.agent.confirm.active  # the store kept the watermark
    second.flush(3.0)  # no retained ack on this broker: re-sent after settle_s
    assert second.sent == [3, 4]
    assert second.agent.stats.telemetry_resent == 2
    second.close()


def test_unconfirmed_readings_go_again_after_the_timeout(tmp_path: Path) -> None:
    rig = Rig(tmp_path, telemetry_confirm="on", telemetry_confirm_timeout_s=10.0)
    rig.sample(3)
    # Sent at the first tick, acknowledged at the second; the third ends the wait
    # after the first connection (no ack came, nothing was unconfirmed at connect).
    rig.flush(3.0)
    assert rig.sent == [1, 2, 3]
    rig.flush(10.0)  # unconfirmed since the fourth tick
    assert rig.sent == [1, 2, 3]
    rig.flush(1.0)  # 10 s unconfirmed, the watermark never moved: again
    assert rig.sent == [1, 2, 3, 1, 2, 3]
    assert rig.agent.stats.telemetry_resent == 3
    rig.ack(3)
    rig.flush(60.0)
    assert rig.sent == [1, 2, 3, 1, 2, 3]  # covered: nothing more
    rig.close()


def test_mode_off_is_the_puback_only_agent(tmp_path: Path) -> None:
    rig = Rig(tmp_path, telemetry_confirm="off")
    rig.sample(3)
    rig.flush()
    assert set(rig.states().values()) == {STORED}
    rig.ack(1)  # nobody listens
    rig.broker.reconnect(DEVICE)
    rig.flush(60.0)
    assert rig.sent == [1, 2, 3]
    assert rig.agent.stats.stored_acks == 0 and rig.agent.stats.refused == {}
    rig.agent.publish_status()
    assert rig.statuses[-1].buffer_unconfirmed is None
    rig.close()


def test_confirmations_change_no_reading_kept_for_training(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.sample(4)
    rig.flush()
    rig.ack(2)
    data = rig.agent.store.unit_data(rig.agent.store.last_unit() or 0)
    assert data.cycles.tolist() == [0, 1, 2, 3]
    assert np.isfinite(data.values).all()
    rig.close()
