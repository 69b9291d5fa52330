"""The agent's runtime stays light: one local training round in a fresh process loads
neither ``torch._dynamo`` nor any server or demo package.

A subprocess imports what ``fedge agent`` imports (the CLI module, the wiring), builds
an agent with ``build_agent`` over the in-memory broker, gives it a global model and
a training round, trains it on the agent's worker thread as a device does, and
reports what ended up in ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SERVER_OR_DEMO = ("influxdb_client", "dp_accounting", "amqtt", "matplotlib", "flwr")

CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path

    import fedge_app.cli  # noqa: F401 - what `fedge agent` imports first
    from edge_agent.sources import SimulatedSensorSource
    from fedge.codec import FrameHeader, encode_frame
    from fedge.config import AgentConfig, default_fleet_model
    from fedge.data.simulator import SiteProfile
    from fedge.messages import RoundAnnouncement, TrainingConfig, encode_message
    from fedge.models import build_model, state_tensors
    from fedge.topics import Topics
    from fedge.transport import InMemoryBroker
    from fedge_app.wiring import build_agent

    workdir = Path(sys.argv[1])
    cfg = AgentConfig(fleet="light", device="dev-1", store_path=workdir / "a.sqlite",
                      sample_interval_s=0.0, torch_threads=1)
    broker = InMemoryBroker()
    updates = []
    topics = Topics("light")
    server = broker.transport("aggregator")
    server.connect(on_message=updates.append)
    server.subscribe(topics.all_updates)
    agent = build_agent(cfg, transport=broker.transport("dev-1"),
                        source=SimulatedSensorSource(profile=SiteProfile(), seed=1),
                        history_units=3)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    spec = default_fleet_model()
    header = FrameHeader(kind="global", fleet="light", round_id=1, base_version=1, version=1,
                         model=spec)
    server.publish(topics.global_model, encode_frame(header, state_tensors(build_model(spec))),
                   retain=True)
    now = time.time()
    ann = RoundAnnouncement(fleet="light", round_id=2, base_version=1, issued_at=now,
                            deadline=now + 60, min_clients=1, training=TrainingConfig(epochs=1))
    server.publish(topics.round_current, encode_message(ann), retain=True)
    deadline = time.monotonic() + 60
    while not updates and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=20)
    print(json.dumps({
        "updates": len(updates),
        "dynamo": "torch._dynamo" in sys.modules,
        "top_level": sorted({m.split(".")[0] for m in sys.modules}),
    }))
    """
)


def test_a_training_round_loads_no_dynamo_and_no_server_package(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True,
        timeout=120, cwd=REPO, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["updates"] == 1  # the round really was trained and answered
    assert report["dynamo"] is False
    assert [p for p in SERVER_OR_DEMO if p in report["top_level"]] == []
