"""The agent's update path: the round's codec, the error-feedback residual in the store,
chunked frames, the training time budget and the busy rule."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.agent import EdgeAgent
from edge_agent.sources import SimulatedSensorSource
from edge_agent.store import ReadingStore
from edge_agent.train_job import residual_key
from fedge.chunking import ChunkAssembler, parse_chunk
from fedge.codec import decode_frame
from fedge.compression import UpdateCodec, parse_update, wire_codec
from fedge.config import AgentConfig
from fedge.data.simulator import SENSOR_NAMES, SiteProfile
from fedge.messages import RoundAnnouncement, TrainingConfig, encode_message
from fedge.models import build_model, state_tensors
from fedge.training import WindowDataset, train_local
from fedge.transport import InMemoryBroker
from tests.unit.test_agent import FLEET, SPEC, TOPICS, Recorder, global_frame, publisher

PLAIN = UpdateCodec()
INT8_EF = UpdateCodec(dtype="int8", delta=True, error_feedback=True)


def _agent(tmp_path: Path, broker: InMemoryBroker, name: str = "a", **config: object
           ) -> EdgeAgent:
    cfg = AgentConfig.model_validate({
        "fleet": FLEET, "device": "dev-1", "store_path": tmp_path / f"{name}.sqlite",
        "sample_interval_s": 0.0, "background_training": False, **config,
    })
    return EdgeAgent(
        cfg, transport=broker.transport(f"dev-1-{name}"),
        source=SimulatedSensorSource(profile=SiteProfile(), seed=1),
        store=ReadingStore(cfg.store_path, n_features=len(SENSOR_NAMES)),
        history_units=3, load_percent=lambda: 0.0,
    )


def _announce(broker: InMemoryBroker, round_id: int, *, codec: UpdateCodec = PLAIN,
              max_message_bytes: int | None = None, deadline_s: float = 60.0) -> None:
    ann = RoundAnnouncement(
        fleet=FLEET, round_id=round_id, task="train", base_version=1, issued_at=time.time(),
        deadline=time.time() + deadline_s, min_clients=1, codec=wire_codec(codec),
        training=TrainingConfig(epochs=1), max_message_bytes=max_message_bytes,
    )
    publisher(broker).publish(TOPICS.round_current, encode_message(ann), retain=True)


def _train_round(tmp_path: Path, codec: UpdateCodec, name: str) -> tuple[EdgeAgent, bytes]:
    """One agent's reply to train round 4 on global model v1 with ``codec``."""
    torch.set_num_threads(1)
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_updates)
    agent = _agent(tmp_path, broker, name)
    agent.start()
    publisher(broker).publish(TOPICS.global_model, global_frame(1), retain=True)
    _announce(broker, 4, codec=codec)
    agent.step()
    (msg,) = rec.on(TOPICS.update(4, "dev-1"))
    return agent, msg.payload


def test_an_int8_ef_update_plus_its_residual_is_the_trained_model(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        plain_agent, plain = _train_round(tmp_path, UpdateCodec(), "plain")
        agent, payload = _train_round(tmp_path, INT8_EF, "int8")
    finally:
        torch.set_num_threads(threads)
    trained = decode_frame(plain).tensors  # same seed, same data: the same local model
    frame = decode_frame(payload)
    assert frame.codec == INT8_EF
    assert len(payload) < len(plain) / 3
    base = state_tensors(build_model(SPEC, seed=0), trainable_only=True)
    decoded = parse_update(frame.tensors, INT8_EF, template=base, base=base).decompress()
    residual = agent.store.load_residual(residual_key(SPEC, INT8_EF))
    assert residual is not None and set(residual) == set(base)
    for name in base:
        # What was sent plus what was kept back is the whole change, to float32 rounding.
        np.testing.assert_allclose(decoded[name] + residual[name], trained[name], atol=1e-6)
    assert max(float(np.abs(r).max()) for r in residual.values()) > 0
    # A plain round keeps no residual.
    assert plain_agent.store.load_residual(residual_key(SPEC, UpdateCodec())) is None
    for a in (plain_agent, agent):
        a.stop()
        a.store.close()


def test_the_residual_survives_a_restart_and_is_dropped_for_another_codec(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.sqlite"
    store = ReadingStore(path, n_features=3)
    tensors = {"w": np.array([[0.5, -0.25]], np.float32), "b": np.array([1e-3], np.float32)}
    store.save_residual("int8", tensors)
    store.close()
    store = ReadingStore(path, n_features=3)  # a restart
    got = store.load_residual("int8")
    assert got is not None and set(got) == {"w", "b"}
    np.testing.assert_array_equal(got["w"], tensors["w"])
    np.testing.assert_array_equal(got["b"], tensors["b"])
    assert store.load_residual("int4") is None  # another codec or spec: dropped ...
    assert store.load_residual("int8") is None  # ... for good
    store.save_residual("int8", tensors)
    store.save_residual("int8", None)
    assert store.load_residual("int8") is None
    store.close()


def test_a_torn_residual_is_dropped_not_fatal(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "t.sqlite", n_features=3)
    store._db.execute("INSERT INTO residual VALUES (0, 'k', ?)", (b"\x08\x00garbage",))
    assert store.load_residual("k") is None
    assert store._db.execute("SELECT COUNT(*) FROM residual").fetchone()[0] == 0
    store.close()


def test_a_frame_above_max_message_bytes_goes_out_in_chunks(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_updates, TOPICS.all_update_chunks)
    agent = _agent(tmp_path, broker)
    agent.start()
    publisher(broker).publish(TOPICS.global_model, global_frame(1), retain=True)
    _announce(broker, 4, max_message_bytes=4096)
    agent.step()
    assert rec.on(TOPICS.update(4, "dev-1")) == []
    chunks = rec.on(TOPICS.update_chunks(4, "dev-1"))
    assert len(chunks) >= 5 and all(len(m.payload) <= 4096 for m in chunks)
    assembler = ChunkAssembler()
    frames = [assembler.add("dev-1", m.payload, time.time()) for m in chunks]
    assert all(f is None for f in frames[:-1]) and frames[-1] is not None
    assert parse_chunk(chunks[0].payload)[0].total == len(frames[-1])
    frame = decode_frame(frames[-1])
    assert frame.header.kind == "update" and frame.header.round_id == 4
    assert agent.stats.answered_rounds == [4]
    agent.stop()
    agent.store.close()


def test_a_busy_device_postpones_then_declines_near_the_deadline(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_updates)
    load = [95.0]
    agent = _agent(tmp_path, broker, max_cpu_percent=50.0, max_train_seconds=20.0)
    agent.load_percent = lambda: load[0]
    agent.start()
    publisher(broker).publish(TOPICS.global_model, global_frame(1), retain=True)
    _announce(broker, 4, deadline_s=60.0)
    agent.step()
    agent.step()
    assert rec.messages == [] and agent._pending_round is not None  # postponed, not dropped
    load[0] = 10.0  # the machine calmed down: the round is trained after all
    agent.step()
    (reply,) = rec.on(TOPICS.update(4, "dev-1"))
    assert decode_frame(reply.payload).header.kind == "update"

    load[0] = 95.0
    _announce(broker, 5, deadline_s=15.0)  # closer than max_train_seconds: decline now
    agent.step()
    (decline,) = rec.on(TOPICS.update(5, "dev-1"))
    header = decode_frame(decline.payload).header
    assert (header.kind, header.reason) == ("decline", "busy")
    assert header.detail is not None and "95%" in header.detail
    assert 5 in agent._answered and agent._pending_round is None
    agent.stop()
    agent.store.close()


def _dataset(n: int) -> WindowDataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, SPEC.window, SPEC.input_features)).astype(np.float32)
    return WindowDataset(x, rng.uniform(0, 100, n).astype(np.float32))


def test_training_stops_at_its_time_budget_and_keeps_the_steps_done() -> None:
    ticks = iter(range(1000))
    model = build_model(SPEC)
    before = state_tensors(model, trainable_only=True)
    # 64 windows at batch 8 = 8 steps per epoch, 2 epochs = 16 steps. The clock reads
    # 0 at the start and 1, 2, 3 after the steps: 3 >= 2.5 stops after step 3.
    result = train_local(model, _dataset(64), TrainingConfig(epochs=2, batch_size=8),
                         time_budget_s=2.5, clock=lambda: float(next(ticks)))
    assert (result.steps, result.out_of_time, result.num_examples) == (3, True, 64)
    after = state_tensors(model, trainable_only=True)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert not model.training


def test_a_budget_that_is_never_reached_changes_nothing() -> None:
    config = TrainingConfig(epochs=1, batch_size=16)
    a, b = build_model(SPEC, seed=3), build_model(SPEC, seed=3)
    torch.manual_seed(0)  # dropout draws from torch's global generator
    ra = train_local(a, _dataset(48), config, seed=7)
    torch.manual_seed(0)
    rb = train_local(b, _dataset(48), config, seed=7, time_budget_s=1e6)
    assert (ra.steps, rb.steps, rb.out_of_time) == (3, 3, False)
    for name, value in state_tensors(a).items():
        np.testing.assert_array_equal(value, state_tensors(b)[name])


def test_the_last_step_is_not_reported_as_out_of_time() -> None:
    ticks = iter(range(1000))
    result = train_local(build_model(SPEC), _dataset(16), TrainingConfig(epochs=1, batch_size=8),
                         time_budget_s=1.5, clock=lambda: float(next(ticks)))
    assert (result.steps, result.out_of_time) == (2, False)


def test_store_size_budget_bounds_the_readings(tmp_path: Path) -> None:
    # 15 features: 60 value bytes + 64 bytes of row overhead = 124 bytes per reading.
    assert ReadingStore.readings_for_bytes(124 * 10_000, 15) == 10_000
    assert ReadingStore.readings_for_bytes(1 << 20, 15) == 8456
    assert ReadingStore.readings_for_bytes(10_000, 15) == 1000  # floor
    store = ReadingStore(tmp_path / "m.sqlite", n_features=15, max_readings=500_000,
                         max_bytes=124 * 2_000)
    assert store.max_readings == 2_000
    store.close()


@pytest.mark.parametrize("threads", [0, -1])
def test_torch_threads_must_be_positive(threads: int) -> None:
    from fedge.training import set_torch_threads

    with pytest.raises(ValueError, match="threads"):
        set_torch_threads(threads)


def test_max_examples_trains_on_the_same_subset_without_copying_it() -> None:
    data = _dataset(40)
    config = TrainingConfig(epochs=2, batch_size=8, max_examples=24)
    keep = np.random.default_rng(5).choice(40, 24, replace=False)  # the documented subset
    subset = WindowDataset(data.x[keep], data.rul[keep])
    a, b = build_model(SPEC, seed=2), build_model(SPEC, seed=2)
    torch.manual_seed(0)
    ra = train_local(a, data, config, seed=5)
    torch.manual_seed(0)
    rb = train_local(b, subset, config.model_copy(update={"max_examples": None}), seed=5)
    assert (ra.num_examples, ra.steps) == (rb.num_examples, rb.steps) == (24, 6)
    assert ra.loss == rb.loss
    for name, value in state_tensors(a).items():
        np.testing.assert_array_equal(value, state_tensors(b)[name])
