"""The fleet as the broker sees it, for ``fedge status``.

:class:`FleetSnapshot` folds the messages of a fleet's topics (retained statuses and
wills, the retained global model and round, predictions) into one entry per device;
:func:`collect_fleet_status` subscribes with any :class:`~fedge.transport.Transport`
and gathers them for a bounded time. Nothing from the network is trusted: a message
that does not decode is counted by reason and skipped.
"""

from __future__ import annotations

import queue
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fedge.codec import decode_frame
from fedge.errors import ProtocolError
from fedge.messages import DeviceStatus, Prediction, RoundAnnouncement, decode_message
from fedge.topics import TopicKind, Topics, parse_topic
from fedge.transport import InboundMessage, Transport, drain

__all__ = ["FleetSnapshot", "behind", "collect_fleet_status", "device_json"]


def device_json(
    s: DeviceStatus, p: Prediction | None, global_version: int | None
) -> dict[str, Any]:
    """One device's entry: its latest status and, if one came, its latest prediction."""
    return {
        "device": s.device,
        "state": s.state,
        "online": s.state == "online",
        "last_seen": s.ts,
        "site": s.site,
        "agent_version": s.agent_version,
        "model_version": s.model_version,
        "behind_global": behind(s, global_version),
        "buffer_depth": s.buffer_depth,
        "buffer_unconfirmed": s.buffer_unconfirmed,
        "confirmed_through_seq": s.confirmed_through_seq,
        "source_state": s.source_state,
        "last_error": s.last_error,
        "cpu_percent": s.cpu_percent,
        "memory_mb": s.memory_mb,
        "prediction": None
        if p is None
        else {
            "ts": p.ts,
            "model_version": p.model_version,
            "rul": p.rul,
            "failure_probability": p.failure_probability,
            "alert": p.alert,
            "unit": p.unit,
        },
    }


def behind(status: DeviceStatus, global_version: int | None) -> bool:
    """An online device that does not run the fleet's current global model (it has not
    received it yet, or refused it: its ``last_error`` says why)."""
    return (
        status.state == "online"
        and global_version is not None
        and status.model_version != global_version
    )


@dataclass
class FleetSnapshot:
    """What the broker said about ``fleet`` so far."""

    fleet: str
    statuses: dict[str, DeviceStatus] = field(default_factory=dict)
    predictions: dict[str, Prediction] = field(default_factory=dict)
    global_version: int | None = None
    global_round: int | None = None
    round: RoundAnnouncement | None = None
    predictions_received: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def add(self, msg: InboundMessage) -> None:
        """Fold one message in (refused ones are counted under ``rejected``)."""
        try:
            parsed = parse_topic(msg.topic)
            if parsed.fleet != self.fleet:
                raise ProtocolError(f"topic of fleet {parsed.fleet}")
            if parsed.kind is TopicKind.STATUS:
                status = decode_message(DeviceStatus, msg.payload)
                if status.device != parsed.device or status.fleet != self.fleet:
                    raise ProtocolError(f"status on {msg.topic} names {status.device}")
                self.statuses[status.device] = status
            elif parsed.kind is TopicKind.PREDICTION:
                prediction = decode_message(Prediction, msg.payload)
                if prediction.device != parsed.device or prediction.fleet != self.fleet:
                    raise ProtocolError(f"prediction on {msg.topic} names {prediction.device}")
                self.predictions_received += 1
                self.predictions[prediction.device] = prediction
            elif parsed.kind is TopicKind.GLOBAL_MODEL:
                header = decode_frame(msg.payload).header
                self.global_version, self.global_round = header.version, header.round_id
            elif parsed.kind is TopicKind.ROUND_CURRENT:
                self.round = decode_message(RoundAnnouncement, msg.payload)
        except ProtocolError as exc:
            self.rejected[exc.reason.value] += 1

    @property
    def complete(self) -> bool:
        """Every online device has sent a prediction (nothing more to wait for)."""
        online = [d for d, s in self.statuses.items() if s.state == "online"]
        return bool(online) and all(d in self.predictions for d in online)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the global model, the current round, one entry per device."""
        ann = self.round
        return {
            "fleet": self.fleet,
            "global_model": None
            if self.global_version is None
            else {"version": self.global_version, "round_id": self.global_round},
            "round": None
            if ann is None
            else {
                "round_id": ann.round_id,
                "task": ann.task,
                "base_version": ann.base_version,
                "deadline": ann.deadline,
                "selected": ann.selected,
            },
            "devices": [
                device_json(self.statuses[d], self.predictions.get(d), self.global_version)
                for d in sorted(self.statuses)
            ],
            "predictions_received": self.predictions_received,
            "rejected": dict(self.rejected),
        }


def collect_fleet_status(
    transport: Transport, fleet: str, *, timeout: float, settle: float = 0.5
) -> FleetSnapshot:
    """Subscribe to ``fleet``'s topics and gather for at most ``timeout`` seconds.

    Retained messages (statuses, wills, the global model, the round) arrive at once;
    predictions only when devices publish them. Gathering ends early once every online
    device has sent a prediction, but never before ``settle`` seconds (the retained
    messages of a large fleet take a moment). The transport is closed afterwards.
    """
    topics = Topics(fleet)
    inbox: queue.Queue[InboundMessage] = queue.Queue()
    snapshot = FleetSnapshot(fleet)
    started = time.monotonic()
    transport.connect(on_message=inbox.put)
    try:
        for topic in (
            topics.all_status,
            topics.global_model,
            topics.round_current,
            topics.all_predictions,
        ):
            transport.subscribe(topic)
        while (elapsed := time.monotonic() - started) < timeout:
            for msg in drain(inbox, timeout=min(0.1, timeout - elapsed)):
                snapshot.add(msg)
            if elapsed >= settle and snapshot.complete:
                break
    finally:
        transport.close()
    return snapshot
