"""An agent answers a sampled round only if the announcement selected it; its last error
and model version are kept in its store."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from fedge.messages import RoundAnnouncement, encode_message
from fedge.transport import InMemoryBroker
from tests.unit.test_agent import (
    FLEET,
    TOPICS,
    Recorder,
    global_frame,
    make_agent,
    publisher,
)


def announce_train(broker: InMemoryBroker, round_id: int, selected: list[str] | None) -> None:
    ann = RoundAnnouncement(
        fleet=FLEET, round_id=round_id, task="train", base_version=2, issued_at=time.time(),
        deadline=time.time() + 60, min_clients=1, selected=selected,
    )
    publisher(broker).publish(TOPICS.round_current, encode_message(ann), retain=True)


def test_a_device_not_selected_skips_the_round_and_answers_the_next(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_updates)
    agent = make_agent(tmp_path, broker)
    agent.start()
    publisher(broker).publish(TOPICS.global_model, global_frame(2), retain=True)
    announce_train(broker, 5, ["dev-7", "dev-9"])
    agent.step()
    agent.step()
    assert rec.on(TOPICS.update(5, "dev-1")) == []
    assert agent.stats.rounds_answered == 0
    announce_train(broker, 6, ["dev-1", "dev-9"])
    agent.step()
    assert len(rec.on(TOPICS.update(6, "dev-1"))) == 1
    announce_train(broker, 7, None)  # None: every device
    agent.step()
    assert len(rec.on(TOPICS.update(7, "dev-1"))) == 1
    assert agent.stats.answered_rounds == [6, 7]
    agent.stop()
    agent.store.close()


def test_the_last_error_and_model_version_land_in_the_store(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    agent = make_agent(tmp_path, broker)
    agent.start()
    server = publisher(broker)
    server.publish(TOPICS.global_model, global_frame(2), retain=True)
    agent.step()
    server.publish(TOPICS.global_model, b"FEDG\x01\x00garbage", retain=True)
    agent.step()
    agent.publish_status()
    path = agent.store.path
    agent.stop()
    agent.store.close()
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    assert meta["model_version"] == "2"
    # The frame's header length field is the bytes b"garb" read as a big-endian uint32.
    assert meta["last_error"] == f"malformed: header length {int.from_bytes(b'garb')} exceeds 65536"
