"""The real MQTT transport: paho-mqtt 2.x behind fedge's :class:`~fedge.transport.Transport`.

paho runs its network loop on its own thread and reconnects by itself
(``reconnect_delay_set``); this adapter restores subscriptions on every
(re)connect, keeps QoS 1 publishes queued across disconnects (paho re-sends
them), and translates paho's return codes and socket errors into
:class:`~fedge.errors.TransportError`.

Persistent sessions and manual acknowledgements (used by ingest): with
``clean_session=False`` the broker keeps the session (subscriptions and QoS 1
messages) of this client id while it is away: MQTT 3.1.1 ``clean_session=0``, or
MQTT 5 ``clean_start=0`` on every connect with a Session Expiry Interval of
``session_expiry_s``. With ``manual_ack=True`` paho sends no PUBACK by itself
(``Client(manual_ack=True)``); each QoS>0 message is handed over with an ack
handle that sends ``client.ack(mid, qos)``. A packet id is only meaningful on the
connection that delivered it, so an ack handle from an earlier connection does
nothing: the broker re-sends that message on the new connection (with DUP set),
which is why consumers with manual acks must store idempotently.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fedge.config import BrokerEndpoint
from fedge.errors import TransportError
from fedge.transport import InboundMessage, MessageCallback, PublishHandle, Will

__all__ = ["PahoTransport"]

log = logging.getLogger(__name__)

_PENDING_RCS = (
    MQTTErrorCode.MQTT_ERR_SUCCESS,
    MQTTErrorCode.MQTT_ERR_NO_CONN,
    MQTTErrorCode.MQTT_ERR_AGAIN,
)


class _PahoPublishHandle:
    """Wraps paho's MQTTMessageInfo without its exceptions for 'not connected yet'."""

    def __init__(self, info: mqtt.MQTTMessageInfo) -> None:
        self._info = info

    @property
    def delivered(self) -> bool:
        if self._info.rc not in _PENDING_RCS:
            raise TransportError(f"publish failed: {mqtt.error_string(self._info.rc)}")
        # A message published while disconnected has rc NO_CONN, stays queued in paho
        # and is re-sent on reconnect; is_published() would raise for it, so read the
        # flag paho sets on PUBACK directly.
        with self._info._condition:
            return bool(self._info._published)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.delivered:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._info._condition:
                self._info._condition.wait(min(remaining, 0.1))
        return True


#: MQTT 5 Session Expiry Interval of a persistent session unless told otherwise: a week.
DEFAULT_SESSION_EXPIRY_S = 7 * 86_400


class PahoTransport:
    """A :class:`~fedge.transport.Transport` over paho-mqtt 2.x.

    ``clean_session=False`` with a stable ``client_id`` asks the broker to queue
    QoS 1 messages for this client while it is away (used by the aggregator and
    ingest); over MQTT 5 the session then outlives a disconnect by
    ``session_expiry_s``. ``manual_ack=True`` defers each PUBACK until the consumer
    calls :meth:`ack` (see the module docs); by default paho acknowledges as soon as
    the handler returns.
    """

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        *,
        client_id: str,
        clean_session: bool = True,
        manual_ack: bool = False,
        session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
        connect_timeout: float = 15.0,
        max_inflight: int = 100,
    ) -> None:
        if not 0 <= session_expiry_s <= 0xFFFFFFFF:
            raise TransportError(f"session_expiry_s must fit 32 bits, got {session_expiry_s}")
        self.endpoint = endpoint
        self.client_id = client_id
        self._connect_timeout = connect_timeout
        self._protocol = (
            MQTTProtocolVersion.MQTTv5 if endpoint.protocol == "5" else MQTTProtocolVersion.MQTTv311
        )
        self._clean_session = clean_session
        self._manual_ack = manual_ack
        self._session_expiry_s = session_expiry_s
        self._max_inflight = max_inflight
        # Bumped under _lock whenever a connection ends or starts: ack handles carry the
        # generation of the connection that delivered their message.
        self._generation = 0
        self.acks_sent = 0
        self.acks_stale = 0
        self.session_present = False
        self._client = self._new_client()
        self._lock = threading.Lock()
        self._filters: dict[str, int] = {}
        # What incoming topics must match; replaced (never mutated) by subscribe().
        self._matcher = MQTTMatcher()  # type: ignore[no-untyped-call]  # paho: untyped
        self._on_message_cb: MessageCallback | None = None
        self._connected = threading.Event()
        self._refused: str | None = None
        self._loop_started = False
        self._closed = False
        self._pending: list[_PahoPublishHandle] = []
        # SUBSCRIBE packet ids of the current connection not yet answered by a SUBACK.
        self._unacked_subs: set[int] = set()
        self._subs_done = threading.Condition(self._lock)
        self.reconnects = 0
        self.unsolicited = 0

    def _new_client(self) -> mqtt.Client:
        endpoint = self.endpoint
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self._protocol,
            clean_session=(
                None if self._protocol == MQTTProtocolVersion.MQTTv5 else self._clean_session
            ),
            manual_ack=self._manual_ack,
        )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(self._max_inflight)
        client.max_queued_messages_set(0)  # unbounded: the caller bounds what it queues
        if endpoint.username is not None:
            client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            client.tls_set(
                ca_certs=str(endpoint.ca_file) if endpoint.ca_file else None,
                certfile=str(endpoint.cert_file) if endpoint.cert_file else None,
                keyfile=str(endpoint.key_file) if endpoint.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.on_connect = self._on_connect
        client.on_socket_open = self._on_socket_open
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # paho callbacks (network thread) -----------------------------------------------------
    @staticmethod
    def _on_socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Nagle's algorithm holds small MQTT packets (PUBACKs, short publishes) back for
        # up to ~40 ms per hop waiting for a delayed ACK; rounds are chains of such hops.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as exc:  # not a TCP socket (e.g. a websocket)
            log.debug("TCP_NODELAY not set: %s", exc)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            log.warning("broker refused %s: %s", self.client_id, reason)
            return
        self.session_present = bool(getattr(flags, "session_present", False))
        with self._lock:
            self._generation += 1
            filters = list(self._filters.items())
        # Subscribing again on a resumed session is harmless: the broker replaces the
        # subscription and keeps the session's queue. (Messages the session had queued
        # may arrive before the SUBACK; they pass _subscribed_to because every filter
        # was stored by subscribe(), which ingest calls before connect.)
        mids = [client.subscribe(topic_filter, qos)[1] for topic_filter, qos in filters]
        with self._lock:
            self._unacked_subs = {mid for mid in mids if mid is not None}
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        with self._lock:
            # Ack handles of this connection are void from now on.
            self._generation += 1
        if self._connected.is_set():
            self.reconnects += 1
        self._connected.clear()
        if reason.is_failure:
            log.info("%s disconnected (%s); paho reconnects", self.client_id, reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.warning("%s: broker refused a subscription: %s", self.client_id, refused)
        with self._subs_done:
            self._unacked_subs.discard(mid)
            self._subs_done.notify_all()

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until the broker has answered every SUBSCRIBE of this connection.

        Returns False after ``timeout`` seconds or while disconnected. Only from then
        on does the broker route matching messages to us (or queue them, for a
        persistent session).
        """
        deadline = time.monotonic() + timeout
        with self._subs_done:
            while not (self._connected.is_set() and not self._unacked_subs):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._subs_done.wait(min(left, 0.05))
        return True

    def _subscribed_to(self, topic: str) -> bool:
        # Reads a matcher that subscribe() replaces, never changes: no lock per message.
        # (mqtt.topic_matches_sub builds a matcher on every call: ~10 us a filter.)
        matches = self._matcher.iter_match(topic)  # type: ignore[no-untyped-call]
        return next(iter(matches), None) is not None

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        callback = self._on_message_cb
        if callback is None:
            return
        qos = int(msg.qos)
        handle = None
        if self._manual_ack and qos > 0:
            with self._lock:
                generation = self._generation
            handle = partial(self._send_ack, generation, int(msg.mid), qos)
        if not self._subscribed_to(msg.topic):
            # amqtt (the embedded broker) sometimes hands a new subscriber every
            # retained message, not only those matching its filters; a conforming
            # broker never does. Drop them here so no handler sees foreign topics
            # (acknowledged: it is nobody's message, and an unacknowledged one would
            # hold one of the broker's in-flight slots for this client).
            self.unsolicited += 1
            log.debug("%s: dropped message on unsubscribed topic %s", self.client_id, msg.topic)
            if handle is not None:
                handle()
            return
        try:
            callback(
                InboundMessage(
                    msg.topic,
                    bytes(msg.payload),
                    retain=bool(msg.retain),
                    qos=qos,
                    ack_handle=handle,
                )
            )
        except Exception:
            # An exception escaping here would kill paho's network thread. Without an
            # ack the broker re-sends the message on the next connection.
            log.exception("message handler failed for %s", msg.topic)

    def _send_ack(self, generation: int, mid: int, qos: int) -> None:
        # Held while checking the generation and queueing the PUBACK, so a disconnect
        # (which bumps the generation under the same lock) cannot slip in between:
        # a PUBACK queued for a dead connection is discarded by paho's reconnect.
        with self._lock:
            if generation != self._generation:
                self.acks_stale += 1
                return
            rc = self._client.ack(mid, qos)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.acks_sent += 1
                return
        # Not sent (connection lost meanwhile): the broker re-sends the message.
        log.debug("%s: PUBACK for mid %d not sent: %s", self.client_id, mid, mqtt.error_string(rc))

    # Transport API -------------------------------------------------------------------------
    def connect(self, *, on_message: MessageCallback, will: Will | None = None) -> None:
        if self._closed:  # closed before: paho's client was reset by close()
            self._client = self._new_client()
            self._closed = False
        self._on_message_cb = on_message
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        try:
            if self._protocol == MQTTProtocolVersion.MQTTv5 and not self._clean_session:
                # clean_start=False on *every* connect (paho's default cleans the first
                # one, which would throw away what the broker queued while we were down).
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = self._session_expiry_s
                self._client.connect_async(
                    self.endpoint.host,
                    self.endpoint.port,
                    keepalive=self.endpoint.keepalive,
                    clean_start=False,
                    properties=properties,
                )
            else:
                self._client.connect_async(
                    self.endpoint.host, self.endpoint.port, keepalive=self.endpoint.keepalive
                )
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot connect to {self.endpoint.url}: {exc}") from exc
        self._client.loop_start()
        self._loop_started = True
        deadline = time.monotonic() + self._connect_timeout
        while not self._connected.wait(0.05):
            if self._refused is not None:
                refused = self._refused
                self._abandon()
                raise TransportError(f"broker {self.endpoint.url} refused connection: {refused}")
            if time.monotonic() > deadline:
                self._abandon()
                raise TransportError(
                    f"no connection to {self.endpoint.url} within {self._connect_timeout}s"
                )

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        with self._lock:
            self._filters[topic_filter] = qos
            # "$share/<group>/<filter>" delivers topics matching <filter>.
            matcher = MQTTMatcher()  # type: ignore[no-untyped-call]
            for f in self._filters:
                matcher[f.split("/", 2)[2] if f.startswith("$share/") else f] = True
            self._matcher = matcher
        if self._connected.is_set():
            # Under the lock: the SUBACK (handled on paho's thread, which takes the lock)
            # must not be processed before its packet id is recorded.
            with self._lock:
                rc, mid = self._client.subscribe(topic_filter, qos)
                if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                    self._unacked_subs.add(mid)
            # NO_CONN is fine: _on_connect re-subscribes every stored filter.
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                raise TransportError(f"subscribe {topic_filter!r} failed: {mqtt.error_string(rc)}")

    def ack(self, message: InboundMessage) -> None:
        """Send the PUBACK for ``message`` (a no-op unless it came with manual acks)."""
        message.ack()

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> PublishHandle:
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:  # paho: wildcard in topic, payload too large, bad qos
            raise TransportError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc not in _PENDING_RCS:
            raise TransportError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        handle = _PahoPublishHandle(info)
        if qos > 0:
            with self._lock:
                self._pending = [h for h in self._pending if not h.delivered]
                self._pending.append(handle)
        return handle

    def _abandon(self) -> None:
        """Give up a connection attempt; the next ``connect`` starts from a fresh client.

        paho's ``loop_stop`` leaves the socket and the loop's wake-up socket pair open
        (``loop_start`` makes a new pair each time); ``reinitialise`` closes them.
        """
        self._client.disconnect()
        self._stop_loop()
        self._client.reinitialise()
        self._client = self._new_client()
        self._refused = None

    def _stop_loop(self) -> None:
        if self._loop_started:
            self._client.loop_stop()
            self._loop_started = False

    def close(self, *, drain_timeout: float = 5.0) -> None:
        """Wait up to ``drain_timeout`` for queued QoS>0 publishes, then disconnect."""
        if not self._loop_started:
            return
        deadline = time.monotonic() + drain_timeout
        with self._lock:
            pending, self._pending = self._pending, []
        if self._connected.is_set():
            for handle in pending:
                try:
                    handle.wait(max(0.0, deadline - time.monotonic()))
                except TransportError:
                    continue
        self._client.disconnect()
        self._stop_loop()
        self._connected.clear()
        # paho's loop_stop leaves the loop's wake-up socket pair (and the socket) open:
        # closed only when garbage-collected, with a ResourceWarning (see _abandon).
        # reinitialise closes them and resets the client, so a later connect starts
        # from a new one (not built here: closing must not fail on, e.g., TLS files).
        self._client.reinitialise()
        self._closed = True
