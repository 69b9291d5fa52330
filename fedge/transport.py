"""The transport seam: what the agent and the aggregator need from an MQTT client.

The agent and the aggregator never import paho; they receive an object that
satisfies :class:`Transport`. ``broker.mqtt_transport.PahoTransport`` is the real
one; :class:`InMemoryBroker` here gives in-process transports with MQTT's
semantics (retained messages, ``+``/``#`` filters, last will) for unit tests and
for simulating hundreds of devices in one process.

Callbacks run on the transport's thread. Handlers must be quick: hand the
message to a queue and return (the agent and aggregator do exactly that).

Acknowledgements: by default a transport acknowledges a QoS 1 message to the
broker as soon as the handler returns (the agent and the aggregator rely on
that). A transport built with manual acknowledgements (``PahoTransport(...,
manual_ack=True)``, used by ingest) hands every QoS>0 message over with an ack
handle instead: the broker considers the message delivered only once
:meth:`InboundMessage.ack` (or :meth:`Transport.ack`) is called, so a consumer
that crashes before storing a message gets it again from its persistent session.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from paho.mqtt.client import topic_matches_sub

from fedge.errors import TransportError

__all__ = [
    "AckHandle",
    "InMemoryBroker",
    "InMemoryTransport",
    "InboundMessage",
    "MessageCallback",
    "PublishHandle",
    "Transport",
    "Will",
    "drain",
]

_T = TypeVar("_T")


AckHandle = Callable[[], None]


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message delivered to a subscriber.

    ``ack_handle`` is set only by a transport with manual acknowledgements, for
    QoS>0 messages: calling it (through :meth:`ack`) sends the PUBACK. Without it the
    transport has acknowledged the message already and :meth:`ack` does nothing.
    """

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1
    ack_handle: AckHandle | None = field(default=None, repr=False, compare=False)

    @property
    def needs_ack(self) -> bool:
        """Whether the broker waits for :meth:`ack` before it forgets this message."""
        return self.ack_handle is not None

    def ack(self) -> None:
        """Acknowledge to the broker (idempotence is the transport's: call it once)."""
        if self.ack_handle is not None:
            self.ack_handle()


MessageCallback = Callable[[InboundMessage], None]


@dataclass(frozen=True, slots=True)
class Will:
    """Last will: published by the broker if the client disappears without a clean close."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def drain(inbox: queue.Queue[_T], *, timeout: float = 0.0, limit: int | None = None) -> list[_T]:
    """Everything waiting in ``inbox`` (at most ``limit`` items), waiting up to ``timeout``
    seconds for the first one; an empty list if nothing came.

    The one inbound-queue loop of the agent, the aggregator and ingest: transport
    callbacks put messages on a queue, the service thread drains it here.
    """
    try:
        first = inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait()
    except queue.Empty:
        return []
    items = [first]
    while limit is None or len(items) < limit:
        try:
            items.append(inbox.get_nowait())
        except queue.Empty:
            break
    return items


class PublishHandle(Protocol):
    """Tracks one publish. For QoS 1 ``delivered`` turns true on the broker's PUBACK."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; return whether the broker has the message."""
        ...

    @property
    def delivered(self) -> bool: ...


@runtime_checkable
class Transport(Protocol):
    """A connected MQTT session as the agent and the aggregator see it."""

    def connect(self, *, on_message: MessageCallback, will: Will | None = None) -> None:
        """Connect (blocking until the session is up); inbound messages go to ``on_message``."""
        ...

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        """Subscribe; the subscription is restored after reconnects.

        May be called before :meth:`connect`: the subscription is then made as soon
        as the session is up, before any message is handed to ``on_message`` (a
        persistent session delivers its queued messages right after connecting).
        """
        ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> PublishHandle:
        """Queue a publish and return a handle to wait for its acknowledgement."""
        ...

    def ack(self, message: InboundMessage) -> None:
        """Acknowledge ``message`` to the broker (a no-op unless it needs an ack)."""
        ...

    def close(self) -> None:
        """Disconnect cleanly (the will is not published)."""
        ...

    @property
    def reconnects(self) -> int:
        """How often the connection was lost since :meth:`connect` (the transport
        reconnects by itself). A change tells the agent that the broker may have lost
        what it acknowledged (:mod:`edge_agent.telemetry_confirm`)."""
        ...


# In-process implementation ---------------------------------------------------------------


@dataclass(slots=True)
class _Delivered:
    """Handle for an in-memory publish: the broker took it synchronously."""

    @property
    def delivered(self) -> bool:
        return True

    def wait(self, timeout: float) -> bool:
        return True


@dataclass(slots=True)
class _Session:
    client_id: str
    on_message: MessageCallback
    will: Will | None
    filters: dict[str, int] = field(default_factory=dict)
    on_reconnect: Callable[[], None] | None = None


class InMemoryBroker:
    """A thread-safe in-process message router with MQTT 3.1.1 semantics that fedge relies on.

    Retained messages are kept per topic (an empty retained payload clears one),
    subscribers get matching retained messages on subscribe, and :meth:`drop`
    simulates a crashed client so its will is published, :meth:`reconnect` a client whose
    connection broke and came back.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, bytes] = {}
        self.published_bytes = 0
        self.published_count = 0

    def transport(self, client_id: str) -> InMemoryTransport:
        """A new transport for ``client_id`` on this broker."""
        return InMemoryTransport(self, client_id)

    def _attach(self, session: _Session) -> None:
        with self._lock:
            if session.client_id in self._sessions:
                # MQTT takes over the session of a client id that connects twice.
                self._sessions.pop(session.client_id)
            self._sessions[session.client_id] = session

    def _detach(self, client_id: str, *, publish_will: bool) -> None:
        with self._lock:
            session = self._sessions.pop(client_id, None)
        if session is not None and publish_will and session.will is not None:
            will = session.will
            self._route(will.topic, will.payload, retain=will.retain, qos=will.qos)

    def drop(self, client_id: str) -> None:
        """Simulate an abrupt disconnect of ``client_id`` (its will is published)."""
        self._detach(client_id, publish_will=True)

    def reconnect(self, client_id: str) -> None:
        """Simulate a connection of ``client_id`` that broke and came back at once.

        Its transport's ``reconnects`` goes up and, as a client re-subscribing on a new
        connection gets them, the retained messages matching its filters are delivered
        again. Nothing the broker holds is lost: a dropped link, not a broker crash.
        """
        with self._lock:
            session = self._sessions.get(client_id)
            if session is None:
                raise TransportError(f"client {client_id!r} is not connected")
            filters = dict(session.filters)
        if session.on_reconnect is not None:
            session.on_reconnect()
        for topic_filter, qos in filters.items():
            self._subscribe(client_id, topic_filter, qos)

    def _subscribe(self, client_id: str, topic_filter: str, qos: int) -> None:
        with self._lock:
            session = self._sessions.get(client_id)
            if session is None:
                raise TransportError(f"client {client_id!r} is not connected")
            session.filters[topic_filter] = qos
            retained = [
                (t, p) for t, p in self._retained.items() if topic_matches_sub(topic_filter, t)
            ]
        for topic, payload in retained:
            session.on_message(InboundMessage(topic, payload, retain=True, qos=qos))

    def _route(self, topic: str, payload: bytes, *, retain: bool, qos: int) -> None:
        if "+" in topic or "#" in topic:
            raise TransportError(f"cannot publish to a wildcard topic: {topic!r}")
        with self._lock:
            self.published_count += 1
            self.published_bytes += len(payload)
            if retain:
                if payload:
                    self._retained[topic] = payload
                else:
                    self._retained.pop(topic, None)
            targets = [
                (s, max(q for f, q in s.filters.items() if topic_matches_sub(f, topic)))
                for s in self._sessions.values()
                if any(topic_matches_sub(f, topic) for f in s.filters)
            ]
        for session, sub_qos in targets:
            # Retain flag is cleared on live delivery, as a real broker does.
            session.on_message(InboundMessage(topic, payload, retain=False, qos=min(qos, sub_qos)))


class InMemoryTransport:
    """A :class:`Transport` attached to an :class:`InMemoryBroker`.

    Delivery is synchronous, so there is nothing to acknowledge: :meth:`ack` is a
    no-op (it only counts, in :attr:`acks`). Subscriptions made before the first
    :meth:`connect` are applied when it connects; after :meth:`close` subscribing
    raises TransportError. :meth:`InMemoryBroker.reconnect` bumps :attr:`reconnects`.
    """

    def __init__(self, broker: InMemoryBroker, client_id: str) -> None:
        self._broker = broker
        self.client_id = client_id
        self._connected = False
        self._closed = False
        self._early: dict[str, int] = {}
        self.acks = 0
        self.reconnects = 0

    def _reconnected(self) -> None:
        self.reconnects += 1

    def connect(self, *, on_message: MessageCallback, will: Will | None = None) -> None:
        self._broker._attach(
            _Session(self.client_id, on_message, will, on_reconnect=self._reconnected)
        )
        self._connected = True
        early, self._early = self._early, {}
        for topic_filter, qos in early.items():
            self._broker._subscribe(self.client_id, topic_filter, qos)

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        if not self._connected and not self._closed:
            self._early[topic_filter] = qos
            return
        self._broker._subscribe(self.client_id, topic_filter, qos)

    def ack(self, message: InboundMessage) -> None:
        self.acks += 1
        message.ack()

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> PublishHandle:
        if not self._connected:
            raise TransportError(f"client {self.client_id!r} is not connected")
        self._broker._route(topic, payload, retain=retain, qos=qos)
        return _Delivered()

    def close(self) -> None:
        self._closed = True
        if self._connected:
            self._connected = False
            self._broker._detach(self.client_id, publish_will=False)
