"""Services subscribe before they connect.

A persistent MQTT session hands over what was queued while a client was away (the
replies to a round the aggregator was collecting when it crashed, operator events
for an agent) right after CONNACK, before a SUBSCRIBE sent after connecting is even
processed; and :class:`broker.mqtt_transport.PahoTransport` drops, and acknowledges,
a message on a topic it is not subscribed to. A service that connected first lost
those messages (the aggregator kill -9 chaos test caught it, about one run in two).
"""

from __future__ import annotations

from pathlib import Path

from aggregator.checkpoint import CheckpointStore
from aggregator.service import AggregatorService
from edge_agent.agent import EdgeAgent
from edge_agent.sources import SimulatedSensorSource
from edge_agent.store import ReadingStore
from fedge.config import AgentConfig, AggregatorConfig
from fedge.data.simulator import SENSOR_NAMES, SiteProfile
from fedge.spec import ModelSpec
from fedge.topics import Topics
from fedge.transport import InMemoryBroker, InMemoryTransport, MessageCallback, Will

FLEET = "subfirst"
TOPICS = Topics(FLEET)


class CallOrder(InMemoryTransport):
    """An in-memory transport that notes the order of connect and subscribe calls."""

    def __init__(self, broker: InMemoryBroker, client_id: str) -> None:
        super().__init__(broker, client_id)
        self.calls: list[str] = []

    def connect(self, *, on_message: MessageCallback, will: Will | None = None) -> None:
        self.calls.append("connect")
        super().connect(on_message=on_message, will=will)

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        self.calls.append(topic_filter)
        super().subscribe(topic_filter, qos=qos)


def test_the_aggregator_subscribes_to_replies_before_it_connects(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    transport = CallOrder(broker, "aggregator")
    config = AggregatorConfig(fleet=FLEET, rounds=1, min_clients=1,
                              model=ModelSpec(n_features=3, window=8, hidden=4))
    service = AggregatorService(config, transport=transport,
                                checkpoints=CheckpointStore(tmp_path / "ckpt"))
    service.start()
    try:
        assert transport.calls[-1] == "connect"
        assert {TOPICS.all_updates, TOPICS.all_update_chunks, TOPICS.all_status,
                TOPICS.round_current} <= set(transport.calls[:-1])
        assert transport.calls[0] == TOPICS.round_current  # its retained copy comes first
    finally:
        service.close()


def test_the_agent_subscribes_before_it_connects(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    transport = CallOrder(broker, "dev-1")
    config = AgentConfig(fleet=FLEET, device="dev-1", store_path=tmp_path / "a.sqlite",
                         sample_interval_s=0.0, background_training=False)
    agent = EdgeAgent(config, transport=transport,
                      source=SimulatedSensorSource(profile=SiteProfile(), seed=1),
                      store=ReadingStore(config.store_path, n_features=len(SENSOR_NAMES)),
                      history_units=1)
    agent.start()
    try:
        first_connect = transport.calls.index("connect")
        before = set(transport.calls[:first_connect])
        assert {TOPICS.global_model, TOPICS.round_current, TOPICS.events("dev-1")} <= before
    finally:
        agent.stop()
        agent.store.close()
