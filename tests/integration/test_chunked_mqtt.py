"""Chunked update frames through a real Mosquitto that refuses packets over 64 KiB.

The broker's ``max_packet_size`` is 64 KiB: first checked to be in force (a 70 KB
message is dropped, a small one passes), then a fleet of three agents runs two
training rounds in which every update frame (~22 KB) is above the round's
``max_message_bytes`` (8 KiB) and so travels as chunks that the aggregator
reassembles.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from aggregator.service import AggregatorService
from broker.mqtt_transport import PahoTransport
from edge_agent.agent import EdgeAgent
from edge_agent.sources import SimulatedSensorSource
from edge_agent.store import ReadingStore
from fedge.config import AgentConfig, AggregatorConfig, BrokerEndpoint
from fedge.data.simulator import SENSOR_NAMES, make_site_profiles
from fedge.messages import TrainingConfig
from fedge.spec import ModelSpec
from fedge.topics import TopicKind, Topics, parse_topic
from fedge.transport import InboundMessage
from fedge_app.servers import Mosquitto, find_binary
from tests.support import wait_until

pytestmark = pytest.mark.integration

FLEET = "chunks"
PACKET_LIMIT = 64 * 1024


@pytest.fixture
def small_packet_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    if find_binary("mosquitto") is None:
        pytest.fail("mosquitto is not installed; scripts/test.sh installs it (apt-get)")
    with Mosquitto(tmp_path / "mosquitto",
                   extra_config=[f"max_packet_size {PACKET_LIMIT}"]) as broker:
        yield broker


def test_the_broker_really_refuses_packets_over_the_limit(
    small_packet_mosquitto: Mosquitto,
) -> None:
    endpoint = BrokerEndpoint.from_url(small_packet_mosquitto.url)
    got: list[InboundMessage] = []
    listener = PahoTransport(endpoint, client_id="listener")
    listener.connect(on_message=got.append)
    listener.subscribe(f"fedge/v1/{FLEET}/#")
    sender = PahoTransport(endpoint, client_id="sender")
    sender.connect(on_message=lambda m: None)
    second = PahoTransport(endpoint, client_id="second")
    second.connect(on_message=lambda m: None)
    try:
        sender.publish(f"fedge/v1/{FLEET}/big", b"x" * 70_000)
        # Mosquitto drops the client that sent the oversized packet.
        assert wait_until(lambda: not sender.connected, timeout=5)
        second.publish(f"fedge/v1/{FLEET}/small", b"y" * 1000).wait(3.0)
        assert wait_until(lambda: any(m.topic.endswith("small") for m in got), timeout=5)
        assert not any(m.topic.endswith("big") for m in got)
    finally:
        for client in (sender, second, listener):
            client.close(drain_timeout=0.5)


def test_a_round_with_chunked_updates_completes(
    small_packet_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    endpoint = BrokerEndpoint.from_url(small_packet_mosquitto.url)
    stop = threading.Event()
    agents: list[EdgeAgent] = []
    workers: list[threading.Thread] = []
    seen: list[InboundMessage] = []
    probe = PahoTransport(endpoint, client_id=f"{FLEET}-probe")
    probe.connect(on_message=seen.append)
    probe.subscribe(Topics(FLEET).all_updates)
    probe.subscribe(Topics(FLEET).all_update_chunks)
    try:
        for i, profile in enumerate(make_site_profiles(3, seed=3, non_iid=True)):
            cfg = AgentConfig(fleet=FLEET, device=f"dev-{i}", broker=endpoint,
                              store_path=tmp_path / f"dev-{i}.sqlite", sample_interval_s=0.05,
                              telemetry_interval_s=0.2)
            agent = EdgeAgent(
                cfg, transport=PahoTransport(endpoint, client_id=f"{FLEET}-dev-{i}"),
                source=SimulatedSensorSource(profile=profile, seed=i),
                store=ReadingStore(cfg.store_path, n_features=len(SENSOR_NAMES)),
                history_units=5,
            )
            worker = threading.Thread(target=agent.run, args=(stop,), daemon=True)
            worker.start()
            agents.append(agent)
            workers.append(worker)
        config = AggregatorConfig(
            fleet=FLEET, broker=endpoint, rounds=2, min_clients=3, round_timeout_s=60,
            training=TrainingConfig(epochs=1), model=ModelSpec(n_features=len(SENSOR_NAMES)),
            checkpoint_dir=tmp_path / "ckpt", max_message_bytes=8192,
            final_evaluation=False,
        )
        service = AggregatorService(
            config, transport=PahoTransport(endpoint, client_id=f"{FLEET}-aggregator")
        )
        history = service.run(timeout=90)
    finally:
        probe.close()
        stop.set()
        for worker in workers:
            worker.join(timeout=15)
        for agent in agents:
            agent.store.close()
        torch.set_num_threads(threads)
    assert not any(w.is_alive() for w in workers)
    train = [r for r in history if r.task == "train"]
    assert [(r.outcome, r.participants, r.version) for r in train] == [
        ("completed", 3, 1), ("completed", 3, 2)
    ]
    assert sum(service.coordinator.rejected_total.values()) == 0
    assert all(a.stats.rounds_answered == 3 for a in agents)
    # Stats replies are small and came whole; every training update (~22 KB) came as
    # three chunks of at most 8 KiB.
    kinds = [(parse_topic(m.topic), len(m.payload)) for m in seen]
    whole = [t for t, _ in kinds if t.kind is TopicKind.UPDATE]
    chunks = [(t, n) for t, n in kinds if t.kind is TopicKind.UPDATE_CHUNK]
    assert {t.round_id for t in whole} == {history[0].round_id}
    assert len(chunks) == 2 * 3 * 3 and all(n <= 8192 for _, n in chunks)
    assert {t.round_id for t, _ in chunks} == {r.round_id for r in train}
