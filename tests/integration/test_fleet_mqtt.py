"""A small fleet end to end over a real broker: aggregator + 3 agents, 3 rounds.

Runs against a Mosquitto process and against fedge's embedded broker; both must
bring the global version from 0 to 3 with every agent on the final model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from aggregator.checkpoint import CheckpointStore
from aggregator.service import AggregatorService
from broker.mqtt_transport import PahoTransport
from edge_agent.agent import EdgeAgent
from edge_agent.sources import SimulatedSensorSource
from edge_agent.store import ReadingStore
from fedge.codec import decode_frame
from fedge.config import AgentConfig, AggregatorConfig, BrokerEndpoint
from fedge.data.simulator import SENSOR_NAMES, make_site_profiles
from fedge.messages import TrainingConfig
from fedge.models import state_tensors
from fedge.spec import ModelSpec
from fedge.topics import Topics
from fedge.transport import InboundMessage
from tests.integration.fixtures_mqtt import BrokerProcess
from tests.support import wait_until

pytestmark = pytest.mark.integration

FLEET = "itest"


@dataclass
class Fleet:
    agents: list[EdgeAgent]
    stop: threading.Event
    threads: list[threading.Thread]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _start_fleet(endpoint: BrokerEndpoint, tmp_path: Path, n: int) -> Fleet:
    stop = threading.Event()
    agents, threads = [], []
    for i, profile in enumerate(make_site_profiles(n, seed=3, non_iid=True)):
        cfg = AgentConfig(
            fleet=FLEET,
            device=f"dev-{i}",
            broker=endpoint,
            store_path=tmp_path / f"dev-{i}.sqlite",
            sample_interval_s=0.05,
            telemetry_interval_s=0.2,
        )
        agent = EdgeAgent(
            cfg,
            transport=PahoTransport(endpoint, client_id=f"{FLEET}-dev-{i}"),
            source=SimulatedSensorSource(profile=profile, seed=i),
            store=ReadingStore(cfg.store_path, n_features=len(SENSOR_NAMES)),
            history_units=5,
        )
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        agents.append(agent)
        threads.append(thread)
    return Fleet(agents, stop, threads)


def _stop_fleet(fleet: Fleet) -> None:
    fleet.stop.set()
    for thread in fleet.threads:
        thread.join(timeout=15)
    for agent in fleet.agents:
        agent.store.close()
    assert not any(t.is_alive() for t in fleet.threads)


@pytest.mark.parametrize(
    ("broker_fixture", "context"),
    [("mosquitto", "window"), ("embedded_broker", "window"), ("mosquitto", "history")],
)
def test_three_rounds_over_real_broker(
    broker_fixture: str, context: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    broker: BrokerProcess = request.getfixturevalue(broker_fixture)
    endpoint = BrokerEndpoint.from_url(broker.url)
    config = AggregatorConfig(
        fleet=FLEET,
        broker=endpoint,
        rounds=3,
        min_clients=3,
        round_timeout_s=60,
        training=TrainingConfig(epochs=1, learning_rate=2e-3),
        model=ModelSpec(n_features=len(SENSOR_NAMES), context=context),
        checkpoint_dir=tmp_path / "ckpt",
    )
    fleet = _start_fleet(endpoint, tmp_path, 3)
    try:
        service = AggregatorService(
            config,
            transport=PahoTransport(endpoint, client_id=f"{FLEET}-aggregator"),
        )
        history = service.run(timeout=90)

        train = [r for r in history if r.task == "train"]
        assert [r.version for r in train] == [1, 2, 3]
        assert all(r.outcome == "completed" and r.participants == 3 for r in train)
        assert [r.task for r in history] == ["stats", "train", "train", "train", "evaluate"]
        assert sum(service.coordinator.rejected_total.values()) == 0

        checkpoint = CheckpointStore(tmp_path / "ckpt").load_latest()
        assert checkpoint is not None and checkpoint.version == 3
        # The stats round summarised what this model reads: sensors (+ age with history).
        assert checkpoint.tensors["input_mean"].shape == (config.model.stats_features,)
        assert checkpoint.spec.context == context

        # Every agent ends on the final global model, bit for bit.
        assert wait_until(lambda: all(a.model_version == 3 for a in fleet.agents), timeout=20)
        for agent in fleet.agents:
            assert agent.model is not None
            got = state_tensors(agent.model)
            assert set(got) == set(checkpoint.tensors)
            for name, value in checkpoint.tensors.items():
                np.testing.assert_array_equal(got[name], value)
            assert agent.stats.answered_rounds == [r.round_id for r in history]
            assert agent.stats.rejected_messages == 0
    finally:
        _stop_fleet(fleet)

    # The retained global model on the broker is version 3 too (what a new device gets).
    received: list[InboundMessage] = []
    probe = PahoTransport(endpoint, client_id=f"{FLEET}-probe")
    probe.connect(on_message=received.append)
    try:
        probe.subscribe(Topics(FLEET).global_model)
        assert wait_until(lambda: bool(received), timeout=10)
        assert {m.topic for m in received} == {Topics(FLEET).global_model}
        frame = decode_frame(received[0].payload)
        assert received[0].retain and frame.header.version == 3
    finally:
        probe.close()


def test_aggregator_restart_resumes_from_checkpoint(
    mosquitto: BrokerProcess, tmp_path: Path
) -> None:
    endpoint = BrokerEndpoint.from_url(mosquitto.url)

    def config(rounds: int) -> AggregatorConfig:
        return AggregatorConfig(
            fleet=FLEET,
            broker=endpoint,
            rounds=rounds,
            min_clients=2,
            round_timeout_s=60,
            training=TrainingConfig(epochs=1),
            model=ModelSpec(n_features=len(SENSOR_NAMES)),
            checkpoint_dir=tmp_path / "ckpt",
            final_evaluation=False,
        )

    fleet = _start_fleet(endpoint, tmp_path, 2)
    try:
        first = AggregatorService(config(1), transport=PahoTransport(endpoint, client_id="agg-1"))
        first.run(timeout=60)
        assert first.coordinator.version == 1
        second = AggregatorService(config(3), transport=PahoTransport(endpoint, client_id="agg-2"))
        assert second.coordinator.version == 1  # loaded from the checkpoint, not re-initialised
        history = second.run(timeout=60)
        assert [r.version for r in history] == [2, 3]
        assert [r.task for r in history] == ["train", "train"]  # no second stats round
        assert wait_until(lambda: all(a.model_version == 3 for a in fleet.agents), timeout=20)
    finally:
        _stop_fleet(fleet)


def test_messages_on_unsubscribed_topics_never_reach_the_handler(
    embedded_broker: BrokerProcess,
) -> None:
    endpoint = BrokerEndpoint.from_url(embedded_broker.url)
    publisher = PahoTransport(endpoint, client_id="pub")
    publisher.connect(on_message=lambda m: None)
    for i in range(20):
        publisher.publish(f"fedge/v1/{FLEET}/devices/d{i}/status", b"{}", retain=True).wait(5)
    publisher.publish(Topics(FLEET).global_model, b"FEDG", retain=True).wait(5)
    got: list[InboundMessage] = []
    probe = PahoTransport(endpoint, client_id="probe-2")
    probe.connect(on_message=got.append)
    try:
        probe.subscribe(Topics(FLEET).global_model)
        assert wait_until(lambda: bool(got), timeout=10)
        time.sleep(0.3)  # anything misdelivered would have arrived by now
        assert [m.topic for m in got] == [Topics(FLEET).global_model]
    finally:
        probe.close()
        publisher.close()
