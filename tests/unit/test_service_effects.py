"""AggregatorService carries out a round's effects with the checkpoint save last."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aggregator.checkpoint import CheckpointStore
from aggregator.service import AggregatorService
from aggregator.state import Checkpoint
from fedge.codec import FrameHeader, encode_frame
from fedge.config import AggregatorConfig
from fedge.messages import DeviceStatus, RoundAnnouncement, decode_message, encode_message
from fedge.models import build_model, state_tensors, trainable_names
from fedge.spec import ModelSpec
from fedge.topics import Topics
from fedge.transport import InboundMessage, InMemoryBroker

SPEC = ModelSpec(n_features=3, window=8, hidden=4, context="window")
TOPICS = Topics("svc")


class RecordingStore(CheckpointStore):
    """A real checkpoint store that notes which round was announced when it saved."""

    def __init__(self, directory: Path, seen: list[InboundMessage]) -> None:
        super().__init__(directory)
        self.seen = seen
        self.announced_at_save: list[int] = []

    def save(self, checkpoint: Checkpoint) -> Path:
        rounds = [decode_message(RoundAnnouncement, m.payload).round_id
                  for m in self.seen if m.topic == TOPICS.round_current]
        self.announced_at_save.append(rounds[-1] if rounds else -1)
        return super().save(checkpoint)


def test_the_next_round_is_announced_before_the_checkpoint_is_saved(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    seen: list[InboundMessage] = []
    watcher = broker.transport("watcher")
    watcher.connect(on_message=seen.append)
    watcher.subscribe(TOPICS.round_current)
    config = AggregatorConfig(fleet="svc", rounds=3, min_clients=1, model=SPEC,
                              final_evaluation=False)
    model = build_model(SPEC, seed=config.seed)
    store = RecordingStore(tmp_path / "ckpt", seen)
    # Resume after the stats round: version 0 with its normalisation, round 0 done.
    CheckpointStore(tmp_path / "ckpt").save(Checkpoint(
        fleet="svc", version=0, round_id=0, spec=SPEC, tensors=state_tensors(model),
        stats_done=True))
    service = AggregatorService(config, transport=broker.transport("aggregator"),
                                checkpoints=store, clock=lambda: 1_700_000_000.0)
    service.start()
    device = broker.transport("pump-01")
    device.connect(on_message=lambda m: None)
    device.publish(TOPICS.status("pump-01"), encode_message(
        DeviceStatus(fleet="svc", device="pump-01", state="online")), retain=True)
    service.step(timeout=0.5)
    update = {k: v + np.float32(0.1) for k, v in state_tensors(model).items()
              if k in trainable_names(model)}
    header = FrameHeader(kind="update", fleet="svc", device="pump-01", round_id=1,
                         base_version=0, num_examples=5, created_at=1_700_000_000.0)
    device.publish(TOPICS.update(1, "pump-01"), encode_frame(header, update))
    service.step(timeout=0.5)
    assert service.coordinator.version == 1
    # Round 1 closed: durability first (crash-safe rounds), so its checkpoint was written
    # before round 2 was announced (and before version 1 was published).
    assert store.announced_at_save == [1]
    latest = store.load_latest()
    assert latest is not None and latest.version == 1
