"""A signed fleet on a real Mosquitto: attacked on an open broker, and provisioned.

(a) An OPEN broker (anonymous, no ACL: a misconfigured one) with signing on. An
    attacker client publishes a forged retained global model, a version-9999 model,
    an absurd-normalisation model signed with its own key, a forged greedy
    announcement, a fake retained status for a device that does not exist, and forged
    telemetry. Agents, aggregator and ingest refuse each (counted by reason), rounds
    complete, and no agent thread dies.
(b) The PROVISIONED broker (TLS, client certificates, ACL) with the configs
    ``broker.provision`` wrote: two devices train two rounds end to end, signed.

Every service is built by ``fedge_app.wiring`` from its config, so the keys come from
the ``[security]`` paths as in production.
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

from aggregator.service import AggregatorService
from aggregator.sinks.memory import MemorySink
from broker.provision import ProvisionedFleet, provision_fleet
from edge_agent.agent import EdgeAgent
from edge_agent.sources import SimulatedSensorSource
from fedge.codec import FrameHeader, decode_frame, encode_frame
from fedge.config import (
    AgentConfig,
    AggregatorConfig,
    BrokerEndpoint,
    IngestConfig,
    load_config,
)
from fedge.data.simulator import SENSOR_NAMES, make_site_profiles
from fedge.messages import (
    DeviceStatus,
    RoundAnnouncement,
    RoundSummary,
    TelemetryBatch,
    TrainingConfig,
    encode_message,
)
from fedge.models import build_model, state_tensors
from fedge.signing import SigningKey, sign_frame, sign_message
from fedge.spec import ModelSpec
from fedge.topics import Topics
from fedge_app.servers import Mosquitto, free_port
from fedge_app.wiring import (
    agent_client_id,
    aggregator_client_id,
    build_agent,
    build_aggregator,
    build_ingest,
    mqtt_transport,
)
from tests.integration.fixtures_secure_mqtt import RawClient, secure_broker
from tests.support import wait_until

pytestmark = pytest.mark.integration

FLEET = "signed"
T = Topics(FLEET)
DEVICES = ("pump-01", "pump-02")
SPEC = ModelSpec(n_features=len(SENSOR_NAMES))
ATTACKER = SigningKey.from_seed(bytes(range(50, 82)), signer="aggregator")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Agents:
    agents: list[EdgeAgent]
    threads: list[threading.Thread]
    stop: threading.Event

    def halt(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)
        for agent in self.agents:
            agent.store.close()
        assert not any(t.is_alive() for t in self.threads)


def _agent_config(fleet: ProvisionedFleet, device: str, tmp: Path, **extra: object) -> AgentConfig:
    return load_config(
        AgentConfig,
        fleet.identity(device).config_file,
        store_path=tmp / f"{device}.sqlite",
        sample_interval_s=0.05,
        telemetry_interval_s=0.2,
        status_interval_s=1.0,
        **extra,
    )


def _start_agents(configs: list[AgentConfig]) -> Agents:
    stop = threading.Event()
    agents, threads = [], []
    for i, (cfg, profile) in enumerate(
        zip(configs, make_site_profiles(len(configs), seed=3, non_iid=True), strict=True)
    ):
        agent = build_agent(
            cfg,
            transport=mqtt_transport(cfg.broker, client_id=agent_client_id(cfg)),
            source=SimulatedSensorSource(profile=profile, seed=i),
            history_units=5,
        )
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        agents.append(agent)
        threads.append(thread)
    return Agents(agents, threads, stop)


def _aggregator_config(
    fleet: ProvisionedFleet, tmp: Path, *, rounds: int = 2, **extra: object
) -> AggregatorConfig:
    return load_config(
        AggregatorConfig,
        fleet.identity("aggregator").config_file,
        rounds=rounds,
        min_clients=2,
        round_timeout_s=60.0,
        training=TrainingConfig(epochs=1, learning_rate=2e-3),
        model=SPEC,
        checkpoint_dir=tmp / "ckpt",
        final_evaluation=False,
        **extra,
    )


def _run_aggregator(
    config: AggregatorConfig, on_round: object = None
) -> tuple[AggregatorService, list[RoundSummary]]:
    service = build_aggregator(
        config,
        transport=mqtt_transport(config.broker, client_id=aggregator_client_id(config)),
        on_round=on_round,  # type: ignore[arg-type]
    )
    return service, service.run(timeout=120)


# (a) An open broker, signing on ---------------------------------------------------------------


def _forged_model(version: int, *, std: float = 1.0, key: SigningKey | None = None) -> bytes:
    tensors = state_tensors(build_model(SPEC, seed=9))
    tensors = {k: (v if k.startswith("input_") else -v) for k, v in tensors.items()}
    tensors["input_std"] = np.full_like(tensors["input_std"], std)
    header = FrameHeader(
        kind="global",
        fleet=FLEET,
        round_id=version,
        base_version=version,
        version=version,
        model=SPEC,
    )
    frame = encode_frame(header, tensors)
    return frame if key is None else sign_frame(frame, key, T.global_model)


def _attack(port: int) -> None:
    """Everything from the attack report, from an anonymous client."""
    attacker = RawClient(port=port, client_id="mallory")
    assert attacker.connect()
    now = time.time()
    attacker.publish(T.global_model, _forged_model(3), retain=True)  # unsigned, negated
    attacker.publish(T.global_model, _forged_model(9999))  # unsigned, version 9999
    attacker.publish(T.global_model, _forged_model(4, std=1e-38, key=ATTACKER))  # foreign key
    greedy = RoundAnnouncement(
        fleet=FLEET,
        round_id=77,
        task="stats",
        base_version=0,
        issued_at=now,
        deadline=now + 80,
        min_clients=1,
        training=TrainingConfig(epochs=100, batch_size=1),
    )
    attacker.publish(T.round_current, encode_message(greedy))
    ghost = SigningKey.from_seed(bytes(range(60, 92)), signer="ghost")
    fake = encode_message(DeviceStatus(fleet=FLEET, device="ghost", state="online", ts=now))
    attacker.publish(
        T.status("ghost"), sign_message(fake, ghost, T.status("ghost"), now=now), retain=True
    )
    forged = TelemetryBatch.model_validate(
        {
            "fleet": FLEET,
            "device": "pump-01",
            "readings": [{"seq": 999_999, "ts": now, "values": {"forged": 1.0}}],
        }
    )
    attacker.publish(T.telemetry("pump-01"), encode_message(forged))
    attacker.close()


def test_open_broker_attacks_are_refused_and_rounds_complete(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    keys = provision_fleet(tmp_path / "keys", fleet=FLEET, devices=list(DEVICES))
    open_broker = BrokerEndpoint(host=mosquitto.host, port=mosquitto.port)  # anonymous, no ACL
    sink = MemorySink()
    ingest_cfg = load_config(IngestConfig, keys.identity("ingest").config_file, broker=open_broker)
    ingest, _ = build_ingest(
        ingest_cfg, transport=mqtt_transport(open_broker, client_id="signed-ingest"), sink=sink
    )
    ingest.start()
    agents = _start_agents([_agent_config(keys, d, tmp_path, broker=open_broker) for d in DEVICES])
    attacked = threading.Event()

    def on_round(summary: RoundSummary) -> None:
        if not attacked.is_set():  # after the first (stats) round: mid-training
            attacked.set()
            _attack(mosquitto.port)

    try:
        config = _aggregator_config(keys, tmp_path, broker=open_broker, rounds=3)
        service, history = _run_aggregator(config, on_round)
        assert attacked.is_set()
        # Rounds completed with both real devices; the ghost was never waited for.
        train = [r for r in history if r.task == "train"]
        assert [r.version for r in train] == [1, 2, 3]
        assert all(r.outcome == "completed" and r.participants == 2 for r in train)
        assert all(r.duration_s < 50 for r in history)  # none ran to its deadline
        coordinator = service.coordinator
        assert "ghost" not in coordinator.online
        assert coordinator.rejected_total["unknown_device"] >= 1
        # Every agent refused every forgery by its reason and kept training.
        assert wait_until(lambda: all(a.model_version == 3 for a in agents.agents), timeout=20)
        for agent in agents.agents:
            refused = agent.stats.refused
            assert refused.get("unsigned", 0) >= 3, refused  # two models, one round
            assert refused.get("bad_signature", 0) >= 1, refused  # the foreign-key model
            assert "internal_error" not in refused
            assert 77 not in agent.stats.answered_rounds
            assert agent.stats.rounds_answered >= 3
        assert all(t.is_alive() for t in agents.threads)
        # Ingest stored the real telemetry, not the forgery, and counted it.
        assert wait_until(lambda: ingest.stats.rejected.get("unsigned", 0) >= 1, timeout=10)
        points = sink.points
        assert any(p.measurement == "telemetry" for p in points)
        assert not any(name == "forged" for p in points for name, _ in p.fields)
        assert not any(("device", "ghost") in p.tags for p in points)
    finally:
        agents.halt()
        ingest.stop()


# (b) The provisioned broker ----------------------------------------------------------------------


@pytest.mark.parametrize("max_message_bytes", [None, 8192], ids=["whole", "chunked"])
def test_provisioned_fleet_trains_end_to_end_with_tls_acl_and_signatures(
    tmp_path: Path, max_message_bytes: int | None
) -> None:
    """Also with a broker-size cap below the update's size: signed chunks pass the ACL."""
    fleet = provision_fleet(
        tmp_path / "fleet",
        fleet=FLEET,
        devices=list(DEVICES),
        broker_port=free_port(),
        bind_address="127.0.0.1",
    )
    with secure_broker(fleet, tmp_path / "mosquitto.log"):
        configs = [_agent_config(fleet, d, tmp_path) for d in DEVICES]
        assert all(c.broker.tls and c.security.resolved_mode == "verify" for c in configs)
        agents = _start_agents(configs)
        try:
            service, history = _run_aggregator(
                _aggregator_config(fleet, tmp_path, max_message_bytes=max_message_bytes)
            )
            assert service.coordinator.authenticator.mode == "verify"
            assert service.signer.signs
            train = [r for r in history if r.task == "train"]
            assert [r.version for r in train] == [1, 2]
            assert all(r.outcome == "completed" and r.participants == 2 for r in train)
            assert dict(service.coordinator.rejected_total) == {}
            assert wait_until(lambda: all(a.model_version == 2 for a in agents.agents), timeout=20)
            for agent in agents.agents:
                assert agent.stats.refused.get("unsigned", 0) == 0
                assert agent.stats.rounds_answered == 3  # stats + two training rounds
                if max_message_bytes is None:
                    assert agent.stats.update_chunks_sent == 0
                else:  # two training updates of ~22 kB each, in chunks of at most 8 kB
                    assert agent.stats.update_chunks_sent >= 2 * 3
        finally:
            agents.halt()


# A bad model signed with the real key (a compromised or buggy aggregator) ------------------------


def test_a_signed_model_worse_on_holdout_is_kept_out_by_every_device(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    keys = provision_fleet(tmp_path / "keys", fleet=FLEET, devices=list(DEVICES))
    broker = BrokerEndpoint(host=mosquitto.host, port=mosquitto.port)
    agents = _start_agents([_agent_config(keys, d, tmp_path, broker=broker) for d in DEVICES])
    listener = RawClient(port=mosquitto.port, client_id="observer")
    assert listener.connect()
    listener.subscribe(T.all_updates)
    try:
        service, history = _run_aggregator(
            _aggregator_config(keys, tmp_path, broker=broker, rounds=1)
        )
        assert [r.version for r in history if r.task == "train"] == [1]
        assert wait_until(lambda: all(a.model_version == 1 for a in agents.agents), timeout=20)
        # Version 2, signed with the aggregator's real key: every tensor sane, but it
        # predicts 1000 cycles of life for every machine (no alert would ever fire).
        tensors = dict(service.coordinator.tensors)
        tensors["rul_head.bias"] = np.full_like(tensors["rul_head.bias"], 1000.0)
        key_file = keys.identity("aggregator").signing_key
        assert key_file is not None
        real_key = SigningKey.from_pem(key_file.read_bytes(), signer="aggregator")
        header = FrameHeader(
            kind="global", fleet=FLEET, round_id=9, base_version=1, version=2, model=SPEC
        )
        bad = sign_frame(encode_frame(header, tensors), real_key, T.global_model)
        now = time.time()
        round_on_bad = RoundAnnouncement(
            fleet=FLEET,
            round_id=10,
            task="train",
            base_version=2,
            issued_at=now,
            deadline=now + 30,
            min_clients=2,
        )
        sender = RawClient(port=mosquitto.port, client_id="compromised")
        assert sender.connect()
        sender.publish(T.global_model, bad, retain=True)
        assert wait_until(lambda: all(a.refused_version == 2 for a in agents.agents), timeout=20)
        payload = sign_message(encode_message(round_on_bad), real_key, T.round_current, now=now)
        sender.publish(T.round_current, payload, retain=True)
        sender.close()
        for agent in agents.agents:
            assert agent.model_version == 1 and agent.refused_reason == "worse_on_holdout"
            assert agent.stats.refused.get("worse_on_holdout") == 1

        # Every device declines the round on the refused model, with the reason.
        def declines() -> list[str | None]:
            return [
                decode_frame(payload).header.reason
                for topic, payload in listener.received()
                if topic.startswith(f"{T.root}/rounds/10/")
            ]

        assert wait_until(lambda: len(declines()) == 2, timeout=20), declines()
        assert declines() == ["model_refused", "model_refused"]
        # Predictions still come from version 1.
        before = [a.stats.predictions for a in agents.agents]
        assert wait_until(
            lambda: all(
                a.stats.predictions > b for a, b in zip(agents.agents, before, strict=True)
            ),
            timeout=20,
        )
        assert all(a.model_version == 1 for a in agents.agents)
        assert all(t.is_alive() for t in agents.threads)
    finally:
        listener.close()
        agents.halt()
