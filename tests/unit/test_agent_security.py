"""The agent under attack, over the in-memory broker: forged, rolled-back, absurd, worse
models and forged or greedy rounds are refused (counted by reason), and nothing a
message contains makes ``step()`` raise."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edge_agent.train_job as train_job_module
from edge_agent.agent import EdgeAgent
from edge_agent.model_gate import ModelGate
from edge_agent.sources import SimulatedSensorSource
from edge_agent.store import ReadingStore
from fedge.codec import FrameHeader, decode_frame, encode_frame
from fedge.config import AgentConfig
from fedge.data.simulator import SENSOR_NAMES, SiteProfile
from fedge.data.windows import FeatureStats
from fedge.limits import AgentLimits
from fedge.messages import (
    DeviceStatus,
    Prediction,
    RoundAnnouncement,
    TrainingConfig,
    decode_message,
    encode_message,
)
from fedge.models import build_model, load_tensors, state_tensors
from fedge.signing import (
    Authenticator,
    KeyRegistry,
    Signer,
    SigningKey,
    sign_frame,
    sign_message,
    verify_frame,
    verify_message,
)
from fedge.spec import ModelSpec
from fedge.topics import Topics
from fedge.training import WindowDataset, evaluate, predict, train_local
from fedge.transport import InboundMessage, InMemoryBroker, InMemoryTransport

FLEET = "unit"
TOPICS = Topics(FLEET)
SPEC = ModelSpec(n_features=len(SENSOR_NAMES))
AGGREGATOR = SigningKey.from_seed(bytes(range(100, 132)), signer="aggregator")
ROGUE = SigningKey.from_seed(bytes(range(7, 39)), signer="aggregator")  # not the pinned key
DEVICE = SigningKey.from_seed(bytes(range(32)), signer="dev-1")
PINNED = KeyRegistry(AGGREGATOR.verify_key)
DEVICES = KeyRegistry(AGGREGATOR.verify_key, {"dev-1": DEVICE.verify_key})


class Recorder:
    def __init__(self, broker: InMemoryBroker, *filters: str) -> None:
        self.messages: list[InboundMessage] = []
        self.transport = broker.transport("recorder")
        self.transport.connect(on_message=self.messages.append)
        for f in filters:
            self.transport.subscribe(f)

    def on(self, topic: str) -> list[InboundMessage]:
        return [m for m in self.messages if m.topic == topic]


def make_agent(
    tmp_path: Path, broker: InMemoryBroker, *, verify: bool = True, **config: Any
) -> EdgeAgent:
    cfg = AgentConfig.model_validate(
        {
            "fleet": FLEET,
            "device": "dev-1",
            "store_path": tmp_path / "a.sqlite",
            "sample_interval_s": 0.0,
            "background_training": False,
            "holdout_fraction": 0.5,  # units 1, 3, 5 held out: a held-out set to score on
            **config,
        }
    )
    return EdgeAgent(
        cfg,
        transport=broker.transport("dev-1"),
        source=SimulatedSensorSource(profile=SiteProfile(), seed=1),
        store=ReadingStore(cfg.store_path, n_features=len(SENSOR_NAMES)),
        history_units=6,
        authenticator=Authenticator("verify", PINNED) if verify else None,
        signer=Signer(DEVICE),
    )


def server(broker: InMemoryBroker) -> InMemoryTransport:
    transport = broker.transport("aggregator")
    transport.connect(on_message=lambda m: None)
    return transport


def model_frame(
    version: int, tensors: dict[str, np.ndarray], *, key: SigningKey | None = AGGREGATOR
) -> bytes:
    header = FrameHeader(
        kind="global",
        fleet=FLEET,
        round_id=version,
        base_version=version,
        version=version,
        model=SPEC,
    )
    frame = encode_frame(header, tensors)
    return frame if key is None else sign_frame(frame, key, TOPICS.global_model)


def announcement(
    round_id: int,
    base_version: int,
    *,
    task: str = "train",
    training: TrainingConfig | None = None,
    key: SigningKey | None = AGGREGATOR,
) -> bytes:
    now = time.time()
    ann = RoundAnnouncement(
        fleet=FLEET,
        round_id=round_id,
        task=task,  # type: ignore[arg-type]
        base_version=base_version,
        issued_at=now,
        deadline=now + 60,
        min_clients=1,
        training=training or TrainingConfig(),
        model=SPEC,
    )
    payload = encode_message(ann)
    return payload if key is None else sign_message(payload, key, TOPICS.round_current, now=now)


def normalised(agent: EdgeAgent, *, seed: int = 0) -> dict[str, np.ndarray]:
    """A fresh model's tensors with the normalisation of the agent's own history."""
    stats = FeatureStats.combine(
        FeatureStats.from_array(agent.store.unit_data(u).values) for u in agent.store.failed_units()
    )
    tensors = state_tensors(build_model(SPEC, seed=seed))
    tensors["input_mean"] = stats.mean.astype(np.float32)
    tensors["input_std"] = stats.std.astype(np.float32)
    return tensors


def trained(agent: EdgeAgent, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``tensors`` trained for a few epochs on the agent's training windows."""
    model = build_model(SPEC)
    load_tensors(model, tensors)
    train, _ = agent.datasets(SPEC)
    train_local(model, train, TrainingConfig(epochs=2, batch_size=64, learning_rate=1e-2))
    return state_tensors(model)


def negated(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The attack report's model: the RUL head negated, so a healthy machine reads ~0
    cycles to failure. Every tensor is as sane as the original's."""
    return {k: (-v if k.startswith("rul_head.") else v) for k, v in tensors.items()}


def holdout_rmse(agent: EdgeAgent, tensors: dict[str, np.ndarray]) -> float:
    model = build_model(SPEC)
    load_tensors(model, tensors)
    _, holdout = agent.datasets(SPEC)
    return evaluate(model, holdout).rmse


def started(tmp_path: Path, **config: Any) -> tuple[InMemoryBroker, EdgeAgent, InMemoryTransport]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    broker = InMemoryBroker()
    agent = make_agent(tmp_path, broker, **config)
    agent.start()
    return broker, agent, server(broker)


def deliver(agent: EdgeAgent, aggregator: InMemoryTransport, topic: str, payload: bytes) -> None:
    aggregator.publish(topic, payload, retain=True)
    agent.step()


# Forged and rolled-back models ---------------------------------------------------------------


def test_unsigned_and_foreign_signed_models_are_ignored(tmp_path: Path) -> None:
    _, agent, aggregator = started(tmp_path)
    tensors = normalised(agent)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, tensors, key=None))
    deliver(agent, aggregator, TOPICS.global_model, model_frame(2, tensors, key=ROGUE))
    assert agent.model is None and agent.model_version is None
    assert agent.stats.refused == {"unsigned": 1, "bad_signature": 1}
    assert agent.stats.rejected_messages == 2
    deliver(agent, aggregator, TOPICS.global_model, model_frame(3, tensors))
    assert agent.model_version == 3
    agent.stop()
    agent.store.close()


def test_version_9999_unsigned_is_refused_in_either_mode(tmp_path: Path) -> None:
    _, agent, aggregator = started(tmp_path / "verify")
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, normalised(agent)))
    deliver(agent, aggregator, TOPICS.global_model, model_frame(9999, normalised(agent), key=None))
    assert agent.model_version == 1 and agent.stats.refused == {"unsigned": 1}
    agent.stop()
    agent.store.close()
    # Mode off: nothing is verified, but an unsigned jump past max_version_jump is refused.
    _, agent, aggregator = started(tmp_path / "off", verify=False)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, normalised(agent), key=None))
    deliver(agent, aggregator, TOPICS.global_model, model_frame(9999, normalised(agent), key=None))
    assert agent.model_version == 1 and agent.stats.refused == {"version_jump": 1}
    # ... so the agent keeps answering rounds on its version.
    deliver(agent, aggregator, TOPICS.round_current, announcement(2, 1, task="evaluate", key=None))
    assert agent.stats.answered_rounds == [2]
    agent.stop()
    agent.store.close()


def test_a_lower_version_is_refused_even_signed_and_after_a_restart(tmp_path: Path) -> None:
    broker, agent, aggregator = started(tmp_path)
    tensors = normalised(agent)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(5, tensors))
    deliver(agent, aggregator, TOPICS.global_model, model_frame(4, tensors))
    assert agent.model_version == 5 and agent.stats.refused == {"version_rollback": 1}
    agent.stop()
    agent.store.close()
    # A retained v3 from an old broker snapshot: the restarted agent runs v5 from its store.
    broker = InMemoryBroker()
    server(broker).publish(TOPICS.global_model, model_frame(3, tensors), retain=True)
    again = make_agent(tmp_path, broker)
    again.start()
    again.step()
    assert again.model_version == 5 and again.model is not None
    assert again.stats.refused == {"version_rollback": 1}
    assert again.store.model_floor() == 5
    again.stop()
    again.store.close()


def test_floor_holds_without_the_saved_model(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "a.sqlite", n_features=len(SENSOR_NAMES))
    store.save_model(7, b"not a frame")  # unreadable model, but the version floor stays
    store.close()
    broker = InMemoryBroker()
    agent = make_agent(tmp_path, broker)
    agent.start()
    assert agent.model is None
    deliver(agent, server(broker), TOPICS.global_model, model_frame(6, normalised(agent)))
    assert agent.model is None and agent.stats.refused == {"version_rollback": 1}
    deliver(agent, server(broker), TOPICS.global_model, model_frame(7, normalised(agent)))
    assert agent.model_version == 7  # the floor itself may be loaded: nothing runs yet
    agent.stop()
    agent.store.close()


# Absurd models ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"input_std": 1e-38}, "std_out_of_range"),
        ({"input_mean": 1e12}, "mean_out_of_range"),
        ({"dense.2.weight": 1e6}, "weight_out_of_range"),
    ],
    ids=["tiny-std", "huge-mean", "huge-weight"],
)
def test_absurd_signed_models_are_refused_with_the_reason(
    tmp_path: Path, change: dict[str, float], reason: str
) -> None:
    broker, agent, aggregator = started(tmp_path)
    rec = Recorder(broker, TOPICS.all_status)
    good = normalised(agent)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, good))
    bad = dict(good)
    for name, value in change.items():
        bad[name] = np.full_like(bad[name], value)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(2, bad))
    assert agent.model_version == 1
    assert agent.stats.refused == {reason: 1}
    status = decode_message(
        DeviceStatus,
        verify_message(
            rec.on(TOPICS.status("dev-1"))[-1].payload,
            TOPICS.status("dev-1"),
            DEVICES,
            now=time.time(),
        ).payload,
    )
    assert (status.refused_model_version, status.refused_reason) == (2, reason)
    agent.stop()
    agent.store.close()


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_tensors_are_refused_at_decoding(tmp_path: Path, value: float) -> None:
    _, agent, aggregator = started(tmp_path)
    good = normalised(agent)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, good))
    for name in ("input_mean", "dense.2.weight"):
        bad = dict(good)
        bad[name] = np.full_like(bad[name], value)
        deliver(agent, aggregator, TOPICS.global_model, model_frame(2, bad))
    assert agent.model_version == 1
    assert agent.stats.refused == {"non_finite": 2}
    agent.stop()
    agent.store.close()


@pytest.mark.parametrize(
    ("value", "reason"),
    [(3e38, "non_finite_output"), (1e5, "output_out_of_range")],
    ids=["overflow", "absurd"],
)
def test_insane_outputs_are_refused_by_the_smoke_pass(
    tmp_path: Path, value: float, reason: str
) -> None:
    # Limits loosened so far that only the smoke pass stands between the model and the
    # device: an RUL head of 3e38 overflows float32 to infinity; one of 1e5 predicts
    # RULs of millions of cycles.
    _, agent, aggregator = started(tmp_path, limits={"max_abs_weight": 1e39})
    good = normalised(agent)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, good))
    bad = dict(good)
    for name in ("rul_head.weight", "rul_head.bias"):
        bad[name] = np.full_like(bad[name], value)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(2, bad))
    assert agent.model_version == 1
    assert agent.stats.refused == {reason: 1}
    agent.stop()
    agent.store.close()


# Worse on held-out data -------------------------------------------------------------------------


def test_a_signed_model_worse_on_holdout_is_kept_out(tmp_path: Path) -> None:
    broker, agent, aggregator = started(tmp_path)
    rec = Recorder(broker, TOPICS.all_predictions, TOPICS.all_updates)
    for i in range(40):
        agent._sample(time.time() + i)  # a live unit to predict on
    good = trained(agent, normalised(agent))
    bad = negated(good)
    # The scenario holds: the negated model is far more than 50 % worse here.
    assert holdout_rmse(agent, bad) > 1.5 * holdout_rmse(agent, good)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, good))
    assert agent.model_version == 1
    deliver(agent, aggregator, TOPICS.global_model, model_frame(2, bad))
    assert agent.model_version == 1 and agent.stats.refused == {"worse_on_holdout": 1}
    assert (agent.refused_version, agent.refused_reason) == (2, "worse_on_holdout")
    # Predictions still come from the good model.
    prediction = agent.predict_and_publish()
    assert prediction is not None and prediction.model_version == 1
    model = build_model(SPEC)
    load_tensors(model, good)
    window = agent._live_window(SPEC)
    assert window is not None
    assert prediction.rul == pytest.approx(float(predict(model, window)[0][0]), rel=1e-6)
    published = rec.on(TOPICS.prediction("dev-1"))[-1].payload
    topic = TOPICS.prediction("dev-1")
    signed = verify_message(published, topic, DEVICES, now=time.time())
    assert decode_message(Prediction, signed.payload).model_version == 1
    # A round on the refused model is declined with the reason, signed by the device.
    deliver(agent, aggregator, TOPICS.round_current, announcement(3, 2))
    (reply,) = rec.on(TOPICS.update(3, "dev-1"))
    verify_frame(reply.payload, TOPICS.update(3, "dev-1"), DEVICES)
    header = decode_frame(reply.payload).header
    assert (header.kind, header.reason) == ("decline", "model_refused")
    # A later good model clears the refusal.
    deliver(agent, aggregator, TOPICS.global_model, model_frame(3, good))
    assert agent.model_version == 3 and agent.refused_version is None
    agent.stop()
    agent.store.close()


def test_models_are_vetted_in_the_replaced_one_and_a_refusal_leaves_no_trace(
    tmp_path: Path,
) -> None:
    # From the second model on, a candidate is loaded into the model it would replace
    # (no model built per global model). A refused candidate spoils only that spare.
    _, agent, aggregator = started(tmp_path)
    for i in range(40):
        agent._sample(time.time() + i)  # a live unit to predict on
    good = trained(agent, normalised(agent))
    better = trained(agent, good)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, good))
    first = agent.model
    deliver(agent, aggregator, TOPICS.global_model, model_frame(2, better))
    second = agent.model
    assert agent.model_version == 2 and second is not first
    deliver(agent, aggregator, TOPICS.global_model, model_frame(3, negated(better)))
    assert agent.model_version == 2 and agent.model is second  # refused, vetted in `first`
    assert agent.stats.refused == {"worse_on_holdout": 1}
    deliver(agent, aggregator, TOPICS.global_model, model_frame(4, good))
    assert agent.model_version == 4 and agent.model is first
    # Loaded into the spoilt spare, it is the good model through and through.
    fresh = build_model(SPEC)
    load_tensors(fresh, good)
    for name, value in state_tensors(fresh).items():
        np.testing.assert_array_equal(state_tensors(agent.model)[name], value, err_msg=name)
    window = agent._live_window(SPEC)
    assert window is not None
    prediction = agent.predict_and_publish()
    assert prediction is not None and prediction.model_version == 4
    assert prediction.rul == pytest.approx(float(predict(fresh, window)[0][0]), rel=1e-6)
    agent.stop()
    agent.store.close()


def test_a_spare_of_another_spec_or_the_running_model_is_not_reused() -> None:
    gate = ModelGate(limits=AgentLimits(), margin=None, authenticated=True)
    tensors = state_tensors(build_model(SPEC, seed=4))
    frame = decode_frame(model_frame(5, tensors))
    other = build_model(SPEC.model_copy(update={"hidden": SPEC.hidden + 1}))
    running = build_model(SPEC)
    spare = build_model(SPEC)

    def vet(spare_model: Any) -> Any:
        return gate.vet(frame, running=running, running_version=4, floor=4,
                        holdout=lambda spec: WindowDataset.concat(
                            [], n_features=spec.n_features, window=spec.window),
                        probe=lambda spec: None, spare=spare_model).model

    assert vet(spare) is spare
    for unusable in (other, running, None):
        built = vet(unusable)
        assert built is not unusable and built is not running and built is not spare
        for name, value in tensors.items():
            np.testing.assert_array_equal(state_tensors(built)[name], value, err_msg=name)


def test_the_first_model_and_version_0_are_not_compared(tmp_path: Path) -> None:
    _, agent, aggregator = started(tmp_path)
    untrained = normalised(agent, seed=3)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(0, untrained))
    assert agent.model_version == 0
    agent.stop()
    agent.store.close()
    # The first model a device gets has nothing to be compared with.
    _, agent, aggregator = started(tmp_path / "b")
    deliver(agent, aggregator, TOPICS.global_model, model_frame(4, negated(untrained)))
    assert agent.model_version == 4
    agent.stop()
    agent.store.close()
    _, agent, aggregator = started(tmp_path / "c", model_acceptance_margin=None)
    good = normalised(agent)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, good))
    deliver(agent, aggregator, TOPICS.global_model, model_frame(2, negated(good)))
    assert agent.model_version == 2  # margin None: no comparison
    agent.stop()
    agent.store.close()


# Announcements -----------------------------------------------------------------------------------


def test_unsigned_announcement_is_ignored(tmp_path: Path) -> None:
    broker, agent, aggregator = started(tmp_path)
    rec = Recorder(broker, TOPICS.all_updates)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, normalised(agent)))
    deliver(agent, aggregator, TOPICS.round_current, announcement(2, 1, task="stats", key=None))
    deliver(agent, aggregator, TOPICS.round_current, announcement(3, 1, key=ROGUE))
    assert rec.messages == [] and agent._pending_round is None
    assert agent.stats.refused == {"unsigned": 1, "bad_signature": 1}
    agent.stop()
    agent.store.close()


def test_greedy_announcement_is_clamped_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[TrainingConfig] = []
    real = train_job_module.train_local

    def spy(model: Any, data: WindowDataset, config: TrainingConfig, **kw: Any) -> Any:
        seen.append(config)
        return real(model, data, config, **kw)

    monkeypatch.setattr(train_job_module, "train_local", spy)
    broker, agent, aggregator = started(tmp_path, limits={"max_epochs": 2, "min_batch_size": 16})
    rec = Recorder(broker, TOPICS.all_updates)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, normalised(agent)))
    greedy = TrainingConfig(epochs=100, batch_size=1)
    deliver(agent, aggregator, TOPICS.round_current, announcement(2, 1, training=greedy))
    assert [(c.epochs, c.batch_size) for c in seen] == [(2, 16)]
    (reply,) = rec.on(TOPICS.update(2, "dev-1"))
    assert decode_frame(reply.payload).header.kind == "update"
    agent.stop()
    agent.store.close()


def test_training_past_the_time_budget_declines_the_round(tmp_path: Path) -> None:
    broker, agent, aggregator = started(tmp_path, limits={"max_train_seconds": 0.001})
    rec = Recorder(broker, TOPICS.all_updates)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, normalised(agent)))
    long_round = TrainingConfig(epochs=20, batch_size=8)
    deliver(agent, aggregator, TOPICS.round_current, announcement(2, 1, training=long_round))
    (reply,) = rec.on(TOPICS.update(2, "dev-1"))
    assert decode_frame(reply.payload).header.reason == "train_timeout"
    assert agent.stats.rounds_answered == 0 and agent.stats.declined_rounds == 1
    agent.stop()
    agent.store.close()


def test_background_training_budget_is_enforced_too(tmp_path: Path) -> None:
    broker, agent, aggregator = started(
        tmp_path, background_training=True, limits={"max_train_seconds": 0.05}
    )
    rec = Recorder(broker, TOPICS.all_updates)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, normalised(agent)))
    long_round = TrainingConfig(epochs=20, batch_size=8)
    deliver(agent, aggregator, TOPICS.round_current, announcement(2, 1, training=long_round))
    deadline = time.monotonic() + 30
    while not rec.on(TOPICS.update(2, "dev-1")) and time.monotonic() < deadline:
        agent.step(timeout=0.01)
    (reply,) = rec.on(TOPICS.update(2, "dev-1"))
    assert decode_frame(reply.payload).header.reason == "train_timeout"
    agent.stop()
    agent.store.close()


def test_everything_the_agent_publishes_is_signed(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    rec = Recorder(broker, f"{TOPICS.root}/#")
    agent = make_agent(tmp_path, broker)
    agent.start()
    aggregator = server(broker)
    for i in range(5):
        agent._sample(time.time() + i)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, normalised(agent)))
    deliver(agent, aggregator, TOPICS.round_current, announcement(2, 1, task="evaluate"))
    agent.flush_telemetry(time.time())
    agent.stop()  # the offline status
    mine = [m for m in rec.messages if "/dev-1/" in m.topic or m.topic.endswith("/dev-1")]
    kinds = {m.topic.rsplit("/", 1)[-1] for m in mine}
    assert kinds == {"status", "telemetry", "prediction", "dev-1"}  # dev-1: its update
    for m in mine:
        if m.topic.startswith(f"{TOPICS.root}/rounds/"):
            verify_frame(m.payload, m.topic, DEVICES)
        else:
            verify_message(m.payload, m.topic, DEVICES, now=time.time())
    agent.store.close()


def test_the_last_will_is_signed_at_connect_time(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_status)
    agent = make_agent(tmp_path, broker)
    agent.start()
    broker.drop("dev-1")  # a crash: the broker publishes the will
    will = rec.on(TOPICS.status("dev-1"))[-1].payload
    status = decode_message(
        DeviceStatus, verify_message(will, TOPICS.status("dev-1"), DEVICES, now=time.time()).payload
    )
    assert status.state == "offline"
    agent.store.close()


# Nothing a message contains stops the agent -------------------------------------------------------


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        if op < 0.5 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op < 0.75 and buf:
            del buf[rng.randrange(len(buf)) :]
        else:
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
    return bytes(buf)


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "off"])
def test_a_thousand_random_payloads_per_topic_never_raise(tmp_path: Path, verify: bool) -> None:
    _, agent, aggregator = started(tmp_path, verify=verify)
    good = normalised(agent)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, good))
    rng = random.Random(1234)
    key = AGGREGATOR if verify else None
    seeds = {
        TOPICS.global_model: [model_frame(2, good, key=key), b"FEDG\x01\x00\x00\x00\x00\x02{}"],
        TOPICS.round_current: [announcement(5, 1, task="evaluate", key=key), b"{}"],
    }
    for topic, valid in seeds.items():
        for i in range(1000):
            kind = i % 3
            if kind == 0:
                payload = rng.randbytes(rng.randint(0, 300))
            else:
                payload = _mutate(valid[kind - 1], rng)
            aggregator.publish(topic, payload)
            if i % 50 == 49:
                agent.step()  # must not raise
        agent.step()
    assert agent.stats.rejected_messages > 0
    assert agent.model is not None  # the good model is still running
    # A valid model still gets in afterwards: the agent is alive and well.
    deliver(agent, aggregator, TOPICS.global_model, model_frame(100, good, key=key))
    assert agent.model_version == 100
    agent.stop()
    agent.store.close()


def test_an_unexpected_error_is_contained_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, agent, aggregator = started(tmp_path)

    def boom(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("something no check anticipated")

    monkeypatch.setattr(ModelGate, "vet", boom)
    deliver(agent, aggregator, TOPICS.global_model, model_frame(1, normalised(agent)))
    assert agent.stats.refused == {"internal_error": 1}
    assert "ZeroDivisionError" in (agent.stats.last_error or "")
    agent.stop()
    agent.store.close()
