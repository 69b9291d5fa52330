"""The ``mqtt`` source: readings a plant already publishes, on any MQTT broker.

Each channel names a topic and, for JSON payloads, a dotted ``path`` to its number
(``data.value``, ``readings.0.temp``); with an empty path the payload itself is the
number (``41.2``). Several channels may share a topic. Every ``read()`` makes one
reading from the newest value per channel if anything arrived since the previous
read (otherwise it returns None); a channel that has not been heard from for
``max_age_s`` reads NaN. Payloads that cannot be used are counted as bad rows and
logged with their topic.

This is the plant's broker, not fedge's: its own ``host``/``port``/``tls``/
credentials, read-only, wildcards not allowed (each channel is one topic). The
connection is kept up by :func:`edge_agent.sources.supervisor.supervise`
(exponential backoff with jitter; paho's built-in reconnect has no jitter and does
not retry the first connect), driving paho 2.x's ``loop()`` in one thread.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from edge_agent.sources.base import BaseSource, SensorSample, SourceOptions, expect_options
from edge_agent.sources.inputs import (
    InputError,
    LatestValues,
    LimitedLog,
    json_number,
    lookup_path,
    parse_number,
)
from edge_agent.sources.supervisor import ReconnectOptions, SessionEnded, Worker

__all__ = ["MqttChannel", "MqttOptions", "MqttSource"]

log = logging.getLogger(__name__)

_CONNACK_TIMEOUT_S = 10.0
_LOOP_TIMEOUT_S = 0.1


class MqttChannel(SourceOptions):
    """One channel: a topic and where its number is in the payload."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    topic: Annotated[str, StringConstraints(min_length=1, max_length=65535)]
    path: str = ""

    @field_validator("topic")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        if "+" in value or "#" in value or "\x00" in value:
            raise ValueError(f"topic {value!r}: one exact topic per channel (no + or #)")
        return value

    @property
    def keys(self) -> tuple[str, ...]:
        """The dotted path split into keys (empty: the raw payload)."""
        return tuple(self.path.split(".")) if self.path else ()


class MqttOptions(ReconnectOptions):
    """Options of the ``mqtt`` source (see the module docstring)."""

    host: Annotated[str, StringConstraints(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    client_id: Annotated[str, StringConstraints(max_length=128)] = ""
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    qos: Literal[0, 1, 2] = 1
    channels: Annotated[tuple[MqttChannel, ...], Field(min_length=1)]
    max_age_s: Annotated[float, Field(gt=0.0)] | None = 60.0
    max_payload_bytes: Annotated[int, Field(ge=16, le=64 << 20)] = 1 << 20
    # Bounded so a connect to a dead host cannot hold close() past its 2 s budget.
    connect_timeout_s: Annotated[float, Field(gt=0.0, le=1.5)] = 1.0

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError("channel names must be unique")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if (self.ca_file or self.cert_file) and not self.tls:
            raise ValueError("ca_file/cert_file need tls = true")
        return self


def _close_abandoned_sockets(exc: BaseException) -> None:
    """Close sockets paho dropped on the floor while connecting.

    paho 2.2 does not close the TLS socket when the handshake fails (certificate not
    trusted): it is only referenced from the exception's traceback and would keep its
    descriptor until garbage collection. Close what the failing frames hold.
    """
    tb = exc.__traceback__
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            if isinstance(value, socket.socket):
                value.close()
        tb = tb.tb_next


class _Refused(Exception):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, reason: str, *, auth: bool) -> None:
        super().__init__(f"broker refused the connection: {reason}")
        self.auth = auth


class MqttSource(BaseSource):
    """Channels picked out of the payloads of a plant's MQTT topics."""

    kind: ClassVar[str] = "mqtt"
    Options: ClassVar[type[BaseModel]] = MqttOptions

    def __init__(self, options: MqttOptions) -> None:
        super().__init__()
        self.options = options
        self._by_topic: dict[str, list[tuple[int, MqttChannel]]] = {}
        for i, channel in enumerate(options.channels):
            self._by_topic.setdefault(channel.topic, []).append((i, channel))
        self._latest = LatestValues(len(options.channels), max_age_s=options.max_age_s)
        self._worker = Worker(f"source-mqtt-{options.host}")
        self._bad = LimitedLog(log)
        self._client_id = options.client_id or f"fedge-source-{secrets.token_hex(4)}"
        self._connack: ReasonCode | None = None
        self._lost: str | None = None

    @classmethod
    def from_model(cls, options: BaseModel, *, seed: int) -> Self:
        return cls(expect_options(options, MqttOptions))

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.options.channels)

    @property
    def updates(self) -> int:
        """Channel values received so far (several may go into one reading)."""
        return self._latest.updates

    def start(self) -> None:
        if not self._worker.stop_event.is_set():
            self._worker.start(self._supervise)

    def close(self) -> None:
        self._worker.stop(timeout=2.0)
        self._health.set_state("down")

    def read(self) -> SensorSample | None:
        taken = self._latest.take()
        if taken is None:
            return None
        values, ts = taken
        self._health.reading(ts)
        return SensorSample(values=values, ts=ts)

    # Connection ---------------------------------------------------------------------
    def _supervise(self) -> None:
        self._worker.supervise(self._session, self.options, on_failure=self._on_failure)

    def _on_failure(self, exc: BaseException, delay_s: float) -> None:
        auth = isinstance(exc, _Refused) and exc.auth
        message = f"{self.options.host}:{self.options.port}: {exc}"
        self._health.error(message, state="down" if auth else "reconnecting")
        log.warning("mqtt source %s; reconnecting in %.1f s", message, delay_s)

    def _client(self) -> mqtt.Client:
        o = self.options
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv5 if o.protocol == "5" else mqtt.MQTTv311,
        )
        client.connect_timeout = o.connect_timeout_s
        if o.username is not None:
            client.username_pw_set(o.username, o.password)
        if o.tls:
            client.tls_set(
                ca_certs=str(o.ca_file) if o.ca_file else None,
                certfile=str(o.cert_file) if o.cert_file else None,
                keyfile=str(o.key_file) if o.key_file else None,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _session(self) -> None:
        o = self.options
        stop = self._worker.stop_event
        self._connack = None
        self._lost = None
        client = self._client()
        try:
            try:
                client.connect(o.host, o.port, keepalive=o.keepalive)
            except OSError as exc:  # refused, unreachable, timeout, TLS handshake (SSLError)
                _close_abandoned_sockets(exc)
                raise ConnectionError(f"cannot connect: {exc}") from exc
            connack = self._await_connack(client)
            if connack is None:
                return  # stopping
            if connack.is_failure:
                # 3.1.1 codes 4/5 and 5.0's bad credentials / not authorised / bad auth
                auth = connack.value in (0x04, 0x05, 0x86, 0x87, 0x8C)
                raise _Refused(str(connack), auth=auth)
            topics: list[tuple[str, int]] = [(topic, o.qos) for topic in self._by_topic]
            rc, _ = client.subscribe(topics)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"subscribe failed: {mqtt.error_string(rc)}")
            self._health.connected()
            log.info("mqtt source connected to %s:%d", o.host, o.port)
            while not stop.is_set():
                rc = client.loop(_LOOP_TIMEOUT_S)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise SessionEnded(f"connection lost: {self._lost or mqtt.error_string(rc)}")
        finally:
            if client.is_connected():
                client.disconnect()
                client.loop(_LOOP_TIMEOUT_S)
            # Dropping the client closes its socket and socket pair (paho's __del__).

    def _await_connack(self, client: mqtt.Client) -> ReasonCode | None:
        deadline = time.monotonic() + _CONNACK_TIMEOUT_S
        while not self._worker.stop_event.is_set():
            rc = client.loop(_LOOP_TIMEOUT_S)
            if self._connack is not None:
                return self._connack
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or time.monotonic() > deadline:
                raise ConnectionError(f"no CONNACK ({mqtt.error_string(rc)})")
        return None

    # paho callbacks (run inside client.loop on the session thread) -------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connack = reason

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._lost = str(reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._take(message.topic, message.payload)
        except Exception as exc:  # a payload must never kill the network thread
            log.exception("mqtt source: unexpected failure on %s", message.topic)
            self._health.error(f"{message.topic}: {type(exc).__name__}: {exc}")

    def _take(self, topic: str, payload: bytes | bytearray) -> None:
        channels = self._by_topic.get(topic)
        if not channels:
            return
        now = time.time()
        if len(payload) > self.options.max_payload_bytes:
            limit = self.options.max_payload_bytes
            self._bad_payload(topic, f"{len(payload)} bytes, at most {limit}")
            return
        document: object = None
        decoded = False
        for index, channel in channels:
            try:
                if not channel.keys:
                    value = parse_number(payload.decode("utf-8"))
                else:
                    if not decoded:
                        document = json.loads(payload)
                        decoded = True
                    value = json_number(lookup_path(document, channel.keys), what=channel.path)
            except (InputError, ValueError, RecursionError) as exc:
                self._bad_payload(topic, f"channel {channel.name!r}: {exc}")
                continue
            self._latest.set(index, value, ts=now)

    def _bad_payload(self, topic: str, reason: str) -> None:
        message = f"topic {topic!r}: {reason}"
        self._health.bad_row(message)
        self._bad.warning("bad payload skipped: %s", message)
