"""EdgeAgent behaviour over the in-memory transport (no broker, no threads)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.sources import SensorSample, SimulatedSensorSource
from edge_agent.store import ReadingStore
from fedge.codec import Frame, FrameHeader, decode_frame, encode_frame
from fedge.config import AgentConfig
from fedge.data.context import unit_last_window
from fedge.data.simulator import SENSOR_NAMES, SiteProfile, UnitRun
from fedge.data.windows import FeatureStats
from fedge.errors import FeatureSchemaError
from fedge.messages import (
    DeviceStatus,
    Prediction,
    RoundAnnouncement,
    TelemetryBatch,
    TrainingConfig,
    decode_message,
    encode_message,
)
from fedge.models import build_model, state_tensors
from fedge.spec import ModelSpec, feature_specs
from fedge.topics import Topics
from fedge.training import predict
from fedge.transport import InboundMessage, InMemoryBroker, InMemoryTransport

FLEET = "unit"
TOPICS = Topics(FLEET)
SPEC = ModelSpec(n_features=len(SENSOR_NAMES))


class Recorder:
    """A subscriber that keeps everything it receives."""

    def __init__(self, broker: InMemoryBroker, *filters: str) -> None:
        self.messages: list[InboundMessage] = []
        self.transport = broker.transport("recorder")
        self.transport.connect(on_message=self.messages.append)
        for f in filters:
            self.transport.subscribe(f)

    def on(self, topic: str) -> list[InboundMessage]:
        return [m for m in self.messages if m.topic == topic]


def make_agent(tmp_path: Path, broker: InMemoryBroker, **config: object) -> EdgeAgent:
    cfg = AgentConfig.model_validate(
        {
            "fleet": FLEET,
            "device": "dev-1",
            "store_path": tmp_path / "a.sqlite",
            "sample_interval_s": 0.0,
            "background_training": False,
            **config,
        }
    )
    return EdgeAgent(
        cfg,
        transport=broker.transport("dev-1"),
        source=SimulatedSensorSource(profile=SiteProfile(), seed=1),
        store=ReadingStore(cfg.store_path, n_features=len(SENSOR_NAMES)),
        history_units=3,
    )


HISTORY = ModelSpec(n_features=len(SENSOR_NAMES), context="history", baseline_cycles=5)


def global_frame(version: int, *, seed: int = 0, spec: ModelSpec = SPEC) -> bytes:
    header = FrameHeader(
        kind="global",
        fleet=FLEET,
        round_id=version,
        base_version=version,
        version=version,
        model=spec,
    )
    return encode_frame(header, state_tensors(build_model(spec, seed=seed)))


def publisher(broker: InMemoryBroker) -> InMemoryTransport:
    """A connected stand-in for the aggregator."""
    transport = broker.transport("aggregator")
    transport.connect(on_message=lambda m: None)
    return transport


def announce(
    server: InMemoryTransport,
    round_id: int,
    task: str,
    base_version: int,
    *,
    model: ModelSpec | None = None,
) -> None:
    ann = RoundAnnouncement(
        fleet=FLEET,
        round_id=round_id,
        task=task,  # type: ignore[arg-type]
        base_version=base_version,
        issued_at=time.time(),
        deadline=time.time() + 60,
        min_clients=1,
        model=model,
    )
    server.publish(TOPICS.round_current, encode_message(ann), retain=True)


def test_telemetry_batches_carry_increasing_sequence_numbers(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_telemetry)
    agent = make_agent(tmp_path, broker, telemetry_batch=4)
    agent.start()
    for i in range(10):
        agent._sample(time.time() + i * 0.001)
    queued = agent.flush_telemetry(time.time())
    agent.step()  # acknowledgements arrive; the readings are marked sent
    assert queued == 10
    batches = [decode_message(TelemetryBatch, m.payload) for m in rec.on(TOPICS.telemetry("dev-1"))]
    assert [len(b.readings) for b in batches] == [4, 4, 2]
    seqs = [r.seq for b in batches for r in b.readings]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10
    assert set(batches[0].readings[0].values) == set(SENSOR_NAMES)
    agent.outbox.collect_acks(wait=0.0)
    assert agent.store.unsent_count() == 0
    agent.stop()
    agent.store.close()


def test_bad_global_model_is_counted_not_fatal(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    agent = make_agent(tmp_path, broker)
    agent.start()
    server = publisher(broker)
    server.publish(TOPICS.global_model, b"FEDG\x01\x00garbage", retain=True)
    agent.step()
    assert agent.stats.rejected_messages == 1 and agent.model is None
    server.publish(TOPICS.global_model, global_frame(2), retain=True)
    agent.step()
    assert agent.model_version == 2
    agent.stop()
    agent.store.close()


@pytest.mark.parametrize(("version", "alerts"), [(0, False), (1, True)])
def test_untrained_model_never_raises_alerts(tmp_path: Path, version: int, alerts: bool) -> None:
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_predictions)
    agent = make_agent(tmp_path, broker, alert_rul=1e9)  # any prediction is "below" it
    agent.start()
    for i in range(SPEC.window):  # a full window: a younger life never alerts
        agent._sample(time.time() + i * 0.001)
    publisher(broker).publish(TOPICS.global_model, global_frame(version), retain=True)
    agent.step()
    preds = [decode_message(Prediction, m.payload) for m in rec.on(TOPICS.prediction("dev-1"))]
    assert preds and all(p.model_version == version for p in preds)
    assert all(p.alert is alerts for p in preds)
    assert preds[-1].unit is not None and preds[-1].cycle == SPEC.window - 1
    agent.stop()
    agent.store.close()


def stats_reply(tmp_path: Path, *, model: ModelSpec | None = None) -> tuple[EdgeAgent, Frame]:
    """A started agent with history and its answer to a stats round announcing ``model``."""
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_updates)
    agent = make_agent(tmp_path, broker)
    agent.start()
    announce(publisher(broker), 0, "stats", 0, model=model)
    agent.step()
    (reply,) = rec.on(TOPICS.update(0, "dev-1"))
    return agent, decode_frame(reply.payload)


def test_stats_reply_is_exactly_the_local_feature_sums(tmp_path: Path) -> None:
    agent, frame = stats_reply(tmp_path)
    local = FeatureStats.combine(
        FeatureStats.from_array(agent.store.unit_data(u).values) for u in agent.store.failed_units()
    )
    assert frame.header.kind == "stats" and frame.header.num_examples == local.count
    np.testing.assert_allclose(frame.tensors["sum"], local.sum)
    np.testing.assert_allclose(frame.tensors["sumsq"], local.sumsq)
    agent.stop()
    agent.store.close()


def test_history_stats_reply_adds_the_age_column(tmp_path: Path) -> None:
    agent, frame = stats_reply(tmp_path, model=HISTORY)
    units = [agent.store.unit_data(u) for u in agent.store.failed_units()]
    assert frame.tensors["sum"].shape == (HISTORY.stats_features,)
    np.testing.assert_allclose(
        frame.tensors["sum"][:-1], sum(u.values.astype(np.float64).sum(0) for u in units)
    )
    # Age = cycle + 1: each unit contributes 1 + 2 + ... + n_cycles.
    assert frame.tensors["sum"][-1] == sum(len(u.cycles) * (len(u.cycles) + 1) / 2 for u in units)
    assert frame.tensors["count"][0] == sum(len(u.cycles) for u in units)
    agent.stop()
    agent.store.close()


def test_history_model_trains_and_predicts_with_the_unit_context(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_predictions, TOPICS.all_updates)
    agent = make_agent(tmp_path, broker)
    agent.start()
    for i in range(40):
        agent._sample(time.time() + i)
    server = publisher(broker)
    server.publish(TOPICS.global_model, global_frame(3, spec=HISTORY), retain=True)
    agent.step()
    msgs = rec.on(TOPICS.prediction("dev-1"))
    assert msgs
    pred = decode_message(Prediction, msgs[-1].payload)
    assert pred.cycle == 39 and pred.model_version == 3
    # The published RUL is the model's output on [window, baseline, age] of the live unit.
    assert pred.unit is not None
    unit = agent.store.unit_data(pred.unit)
    expected, _ = predict(agent.model, unit_last_window(unit.values, spec=HISTORY)[None])
    assert pred.rul == pytest.approx(float(expected[0]), rel=1e-6)
    train, _ = agent.datasets(HISTORY)
    assert train.x.shape[1:] == (HISTORY.window, HISTORY.input_features)
    announce(server, 4, "train", 3)
    agent.step()
    assert len(rec.on(TOPICS.update(4, "dev-1"))) == 1
    agent.stop()
    agent.store.close()


def test_history_model_needs_the_units_first_cycles(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_predictions)
    agent = make_agent(tmp_path, broker)
    agent.start()
    # Installed on a machine already 100 cycles into its life: no baseline to compare with.
    for c in range(100, 140):
        agent.store.append(unit=77, cycle=c, ts=time.time(), values=np.ones(len(SENSOR_NAMES)))
    agent._current_unit, agent._current_cycle = 77, 139
    publisher(broker).publish(TOPICS.global_model, global_frame(1, spec=HISTORY), retain=True)
    agent.step()
    assert agent.model_version == 1
    assert rec.on(TOPICS.prediction("dev-1")) == []  # no prediction rather than a wrong one
    agent.stop()
    agent.store.close()


def test_train_round_waits_for_its_base_model(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_updates)
    agent = make_agent(tmp_path, broker)
    agent.start()
    server = publisher(broker)
    announce(server, 5, "train", 3)
    agent.step()
    assert rec.on(TOPICS.update(5, "dev-1")) == []  # no model v3 yet: nothing to train from
    server.publish(TOPICS.global_model, global_frame(3), retain=True)
    agent.step()
    (reply,) = rec.on(TOPICS.update(5, "dev-1"))
    frame = decode_frame(reply.payload)
    assert frame.header.kind == "update" and frame.header.base_version == 3
    assert frame.header.num_examples > 0 and "train_loss" in frame.header.metrics
    assert "input_mean" not in frame.tensors  # updates carry trainable tensors only
    agent.stop()
    agent.store.close()


def test_datasets_follow_the_model_spec(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, InMemoryBroker())
    agent.start()
    window, _ = agent.datasets(SPEC)
    history, _ = agent.datasets(HISTORY)  # same units, new spec: rebuilt, not the cached one
    assert window.x.shape[2] == SPEC.input_features
    assert history.x.shape[2] == HISTORY.input_features
    assert len(window) == len(history) > 0
    agent.stop()
    agent.store.close()


class _RenamedSource(SimulatedSensorSource):
    """The simulated pump with its channels renamed or left out (as a real device has them)."""

    def __init__(self, names: tuple[str | None, ...]) -> None:
        super().__init__(profile=SiteProfile(), seed=1)
        self._keep = [i for i, n in enumerate(names) if n is not None]
        self._names = tuple(n for n in names if n is not None)

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return self._names

    def history(self, n_units: int) -> list[UnitRun]:
        return [
            dataclasses.replace(run, sensors=run.sensors[:, self._keep])
            for run in super().history(n_units)
        ]

    def read(self) -> SensorSample:
        sample = super().read()
        return dataclasses.replace(sample, values=sample.values[self._keep])


def _named_agent(
    tmp_path: Path, broker: InMemoryBroker, names: tuple[str | None, ...], **cfg: object
) -> EdgeAgent:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg_ = AgentConfig.model_validate(
        {
            "fleet": FLEET,
            "device": "pump-03",
            "store_path": tmp_path / "p.sqlite",
            "sample_interval_s": 0.0,
            "background_training": False,
            **cfg,
        }
    )
    return EdgeAgent(
        cfg_,
        transport=broker.transport("pump-03"),
        source=_RenamedSource(names),
        store=ReadingStore(cfg_.store_path, n_features=len([n for n in names if n])),
        history_units=3,
    )


NAMED_SPEC = ModelSpec(features=feature_specs(SENSOR_NAMES))


def test_agent_maps_its_channels_onto_the_fleet_features(tmp_path: Path) -> None:
    def stats_reply(agent: EdgeAgent, broker: InMemoryBroker) -> Frame:
        server = publisher(broker)
        rec = Recorder(broker, TOPICS.all_updates)
        agent.start()
        announce(server, 0, "stats", 0, model=NAMED_SPEC)
        agent.step()
        agent.stop()
        (msg,) = rec.messages
        return decode_frame(msg.payload)

    # The device calls bearing_temp "temp_b"; its [features] table maps it.
    names = tuple("temp_b" if n == "bearing_temp" else n for n in SENSOR_NAMES)
    renamed_broker = InMemoryBroker()
    renamed = _named_agent(
        tmp_path / "a", renamed_broker, names, features={"bearing_temp": "temp_b"}
    )
    plain_broker = InMemoryBroker()
    plain = _named_agent(tmp_path / "b", plain_broker, SENSOR_NAMES)
    got, want = stats_reply(renamed, renamed_broker), stats_reply(plain, plain_broker)
    assert got.header.kind == want.header.kind == "stats"
    for name in ("count", "sum", "sumsq"):
        np.testing.assert_array_equal(got.tensors[name], want.tensors[name])
    # Without the mapping the same device lacks the feature.
    unmapped = _named_agent(tmp_path / "c", InMemoryBroker(), names)
    with pytest.raises(FeatureSchemaError, match="lacks feature bearing_temp"):
        unmapped.columns(NAMED_SPEC)


def test_agent_lacking_a_feature_declines_with_the_reason(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    server = publisher(broker)
    rec = Recorder(broker, TOPICS.all_updates, TOPICS.all_status)
    names = tuple(None if n == "bearing_temp" else n for n in SENSOR_NAMES)
    agent = _named_agent(tmp_path, broker, names)
    agent.start()
    announce(server, 0, "stats", 0, model=NAMED_SPEC)
    agent.step()
    (msg,) = rec.on(TOPICS.update(0, "pump-03"))
    frame = decode_frame(msg.payload)
    assert frame.header.kind == "decline" and frame.tensors == {}
    assert frame.header.reason == "missing_feature"
    assert frame.header.detail == "device pump-03 lacks feature bearing_temp"
    # A global model it cannot serve is not loaded, and the status names the problem.
    server.publish(TOPICS.global_model, global_frame(1, spec=NAMED_SPEC), retain=True)
    agent.step()
    assert agent.model is None
    agent.publish_status()
    status = decode_message(DeviceStatus, rec.on(TOPICS.status("pump-03"))[-1].payload)
    assert status.last_error == "device pump-03 lacks feature bearing_temp"
    # Train rounds on that model are declined too, instead of waiting for a model forever.
    announce(server, 1, "train", 1, model=NAMED_SPEC)
    agent.step()
    assert decode_frame(rec.on(TOPICS.update(1, "pump-03"))[-1].payload).header.kind == "decline"
    agent.stop()


def test_background_training_keeps_sampling_and_stops_promptly(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    server = publisher(broker)
    rec = Recorder(broker, TOPICS.all_updates)
    # A long round (many epochs) so the job is still running while we sample.
    agent = make_agent(tmp_path, broker, background_training=True, sample_interval_s=0.001)
    agent.start()
    server.publish(TOPICS.global_model, global_frame(1), retain=True)
    ann = RoundAnnouncement(
        fleet=FLEET,
        round_id=2,
        task="train",
        base_version=1,
        issued_at=time.time(),
        deadline=time.time() + 600,
        min_clients=1,
        training=TrainingConfig(epochs=100, batch_size=8),
    )
    server.publish(TOPICS.round_current, encode_message(ann), retain=True)
    agent.step()
    assert agent._job is not None and agent._job[1].is_alive()
    before = agent.stats.readings
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        agent.step(timeout=0.002)
    assert agent.stats.readings - before >= 50  # the agent thread kept sampling
    assert not rec.on(TOPICS.update(2, "dev-1"))  # still training
    started = time.monotonic()
    agent.stop()
    assert time.monotonic() - started < 2.0
    assert agent._job is None
    agent.store.close()


def test_background_training_publishes_when_done(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    server = publisher(broker)
    rec = Recorder(broker, TOPICS.all_updates)
    agent = make_agent(tmp_path, broker, background_training=True)
    agent.start()
    server.publish(TOPICS.global_model, global_frame(1), retain=True)
    announce(server, 2, "train", 1)
    deadline = time.monotonic() + 60
    while not rec.on(TOPICS.update(2, "dev-1")) and time.monotonic() < deadline:
        agent.step(timeout=0.01)
    (msg,) = rec.on(TOPICS.update(2, "dev-1"))
    frame = decode_frame(msg.payload)
    assert frame.header.kind == "update" and frame.header.num_examples > 0
    assert agent.stats.answered_rounds == [2]
    agent.stop()
    agent.store.close()


def test_a_finished_job_is_published_even_before_its_thread_has_exited(tmp_path: Path) -> None:
    # The worker fills the box, then wakes the agent thread, then exits: the agent must
    # not wait for the exit (it used to, and the update then waited for the next poll).
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_updates)
    agent = make_agent(tmp_path, broker, background_training=True)
    agent.start()
    ann = RoundAnnouncement(fleet=FLEET, round_id=2, task="train", base_version=1,
                            issued_at=time.time(), deadline=time.time() + 60, min_clients=1)
    header = FrameHeader(kind="update", fleet=FLEET, device="dev-1", round_id=2,
                         base_version=1, num_examples=3)
    frame = encode_frame(header, {"w": np.zeros(2, np.float32)})
    release = threading.Event()
    lingering = threading.Thread(target=release.wait, args=(10.0,), daemon=True)
    lingering.start()
    try:
        agent._job = (ann, lingering, [])
        agent.step()
        assert not rec.on(TOPICS.update(2, "dev-1")) and agent._job is not None  # running
        agent._job[2].append(frame)  # done, the thread not yet gone
        agent.step()
        (msg,) = rec.on(TOPICS.update(2, "dev-1"))
        assert msg.payload == frame and agent._job is None
    finally:
        release.set()
        lingering.join(timeout=10.0)
    agent.stop()
    agent.store.close()


def test_a_dp_round_clips_the_update_on_the_device(tmp_path: Path) -> None:
    from fedge.messages import DpConfig

    broker = InMemoryBroker()
    server = publisher(broker)
    rec = Recorder(broker, TOPICS.all_updates)
    agent = make_agent(tmp_path, broker)
    agent.start()
    server.publish(TOPICS.global_model, global_frame(1), retain=True)
    agent.step()
    assert agent.model is not None
    base = state_tensors(agent.model, trainable_only=True)
    clip = 0.05
    ann = RoundAnnouncement(
        fleet=FLEET, round_id=2, task="train", base_version=1, issued_at=time.time(),
        deadline=time.time() + 60, min_clients=1,
        training=TrainingConfig(dp=DpConfig(clip_norm=clip, noise_multiplier=0.0,
                                            expected_clients=1)),
    )
    server.publish(TOPICS.round_current, encode_message(ann), retain=True)
    agent.step()
    (msg,) = rec.on(TOPICS.update(2, "dev-1"))
    sent = decode_frame(msg.payload).tensors
    # Without noise, what leaves the device is the change clipped to clip_norm.
    norm = float(np.sqrt(sum(np.sum((sent[k].astype(np.float64) - base[k]) ** 2) for k in base)))
    assert norm == pytest.approx(clip, rel=1e-3)
    agent.stop()
    agent.store.close()
