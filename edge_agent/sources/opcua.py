"""The ``opcua`` source: data-change subscriptions on an OPC UA server.

Each channel is a variable node (``node_id = "ns=2;i=2"`` or ``"ns=2;s=Pump.Temp"``).
The source subscribes to data changes (``publishing_interval_ms``) and, like the
``mqtt`` source, each ``read()`` makes one reading from the newest value per node if
anything changed since the previous read; the reading's time is the newest
``SourceTimestamp`` the server sent. A value with a bad status code (the server lost
its device) reads NaN; a value that is not a number (or a boolean, read as 0/1) is
counted as a bad row.

Security: anonymous (default), ``username``/``password``, and/or a certificate via
``security_string = "Basic256Sha256,SignAndEncrypt,cert.pem,key.pem[,server.pem]"``
(asyncua's format; the files are read when connecting).

asyncua runs on its own asyncio loop in one background thread. Its own reconnect
loop has no jitter and does not retry the first connect, so sessions are driven by
:func:`edge_agent.sources.supervisor.supervise_async` (backoff with jitter): a lost
connection (asyncua's watchdog notices within ``watchdog_s``) ends the session,
health goes to ``reconnecting``, and a new session subscribes again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import suppress
from typing import Annotated, Any, ClassVar, Self

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif
from asyncua.ua.uaerrors import UaError
from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from edge_agent.sources.base import BaseSource, SensorSample, SourceOptions, expect_options
from edge_agent.sources.inputs import LatestValues, LimitedLog
from edge_agent.sources.supervisor import ReconnectOptions, Worker, supervise_async

__all__ = ["OpcuaNode", "OpcuaOptions", "OpcuaSource"]

log = logging.getLogger(__name__)

POLICIES = ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
MODES = ("Sign", "SignAndEncrypt")
_DENIED = (
    ua.uaerrors.BadUserAccessDenied
    | ua.uaerrors.BadIdentityTokenRejected
    | ua.uaerrors.BadIdentityTokenInvalid
    | ua.uaerrors.BadCertificateInvalid
    | ua.uaerrors.BadCertificateUntrusted
    | ua.uaerrors.BadSecurityPolicyRejected
)
# How often the loop thread looks at the stop flag set by close(), and how long a
# session may take to end politely before it is cancelled (close() has 2 s in all).
_STOP_POLL_S = 0.05
_GRACE_S = 0.7
_DISCONNECT_TIMEOUT_S = 0.5


class OpcuaNode(SourceOptions):
    """One channel: a variable node."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    node_id: Annotated[str, StringConstraints(min_length=1, max_length=4096)]

    @field_validator("node_id")
    @classmethod
    def _parse(cls, value: str) -> str:
        try:
            ua.NodeId.from_string(value)
        except UaError as exc:
            raise ValueError(f"node_id {value!r} is not an OPC UA node id (ns=2;i=2)") from exc
        return value


class OpcuaOptions(ReconnectOptions):
    """Options of the ``opcua`` source (see the module docstring)."""

    url: Annotated[str, StringConstraints(pattern=r"^opc\.tcp://.+")]
    nodes: Annotated[tuple[OpcuaNode, ...], Field(min_length=1)]
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    security_string: str | None = None
    publishing_interval_ms: Annotated[float, Field(ge=1.0, le=3_600_000.0)] = 500.0
    sampling_interval_ms: Annotated[float, Field(ge=0.0, le=3_600_000.0)] = 0.0
    timeout_s: Annotated[float, Field(gt=0.0, le=60.0)] = 4.0
    watchdog_s: Annotated[float, Field(gt=0.0, le=60.0)] = 1.0
    max_age_s: Annotated[float, Field(gt=0.0)] | None = None

    @field_validator("security_string")
    @classmethod
    def _security(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = value.split(",")
        if not 4 <= len(parts) <= 5 or parts[0] not in POLICIES or parts[1] not in MODES:
            raise ValueError(
                "security_string: expected Policy,Mode,cert,key[,server_cert] with Policy one "
                f"of {', '.join(POLICIES)} and Mode one of {', '.join(MODES)}"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class _Handler:
    """asyncua's subscription callbacks, forwarded to the source (never raise)."""

    def __init__(self, source: OpcuaSource) -> None:
        self._source = source

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        try:
            self._source._on_change(node, val, data)
        except Exception:  # a value must never kill the loop
            log.exception("opcua source: failure handling a data change")

    def status_change_notification(self, status: Any) -> None:
        log.warning("opcua source: subscription status %s", status)


class OpcuaSource(BaseSource):
    """Variables of an OPC UA server, by data-change subscription."""

    kind: ClassVar[str] = "opcua"
    Options: ClassVar[type[BaseModel]] = OpcuaOptions

    def __init__(self, options: OpcuaOptions) -> None:
        super().__init__()
        self.options = options
        self._index = {
            ua.NodeId.from_string(n.node_id).to_string(): i for i, n in enumerate(options.nodes)
        }
        self._latest = LatestValues(len(options.nodes), max_age_s=options.max_age_s)
        self._worker = Worker(f"source-opcua-{options.url}")
        self._bad = LimitedLog(log)

    @classmethod
    def from_model(cls, options: BaseModel, *, seed: int) -> Self:
        return cls(expect_options(options, OpcuaOptions))

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.options.nodes)

    @property
    def updates(self) -> int:
        """Channel values received so far (several may go into one reading)."""
        return self._latest.updates

    def start(self) -> None:
        if not self._worker.stop_event.is_set():
            self._worker.start(lambda: asyncio.run(self._main()))

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

    # The loop thread ----------------------------------------------------------------
    async def _main(self) -> None:
        stop = asyncio.Event()
        o = self.options
        task = asyncio.create_task(
            supervise_async(
                lambda: self._session(stop),
                stop=stop,
                on_failure=self._on_failure,
                initial_s=o.reconnect_initial_s,
                max_s=o.reconnect_max_s,
                healthy_after_s=o.healthy_after_s,
            )
        )
        while not self._worker.stop_event.is_set() and not task.done():
            await asyncio.wait({task}, timeout=_STOP_POLL_S)
        stop.set()
        # Give the session a moment to unsubscribe and close its session politely,
        # then cancel it (a connect to a dead host would otherwise hold close()).
        done, _ = await asyncio.wait({task}, timeout=_GRACE_S)
        if not done:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    def _on_failure(self, exc: BaseException, delay_s: float) -> None:
        # Retrying cannot fix refused credentials or a missing certificate file, but
        # the operator may fix them while we wait: keep retrying, report "down".
        denied = isinstance(exc, _DENIED | FileNotFoundError)
        text = str(exc) or type(exc).__name__
        message = f"{self.options.url}: {text}"
        self._health.error(message, state="down" if denied else "reconnecting")
        log.warning("opcua source %s; reconnecting in %.1f s", message, delay_s)

    async def _session(self, stop: asyncio.Event) -> None:
        o = self.options
        client = Client(o.url, timeout=o.timeout_s, watchdog_intervall=o.watchdog_s)
        client.session_timeout = 60_000  # ms; servers revise 1 h down and log about it
        if o.username is not None and o.password is not None:
            client.set_user(o.username)
            client.set_password(o.password)
        if o.security_string is not None:
            await client.set_security_string(o.security_string)
        lost = asyncio.Event()
        reason: list[str] = []

        async def on_lost(exc: Exception) -> None:
            reason.append(repr(exc))
            lost.set()

        client.connection_lost_callback = on_lost
        try:
            await client.connect()
            await self._subscribe(client)
            self._health.connected()
            log.info("opcua source connected to %s", o.url)
            waits = [asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
            if lost.is_set() and not stop.is_set():
                raise ConnectionError(f"connection lost: {reason[0] if reason else '?'}")
        finally:
            with suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=_DISCONNECT_TIMEOUT_S)

    async def _subscribe(self, client: Client) -> None:
        o = self.options
        subscription = await client.create_subscription(o.publishing_interval_ms, _Handler(self))
        nodes = [client.get_node(n.node_id) for n in o.nodes]
        results = await subscription.subscribe_data_change(
            nodes, sampling_interval=ua.Double(o.sampling_interval_ms)
        )
        failed = 0
        for spec, result in zip(o.nodes, results, strict=True):
            if isinstance(result, ua.StatusCode):
                failed += 1
                message = f"node {spec.node_id} ({spec.name}): cannot subscribe: {result.name}"
                self._health.error(message)
                log.error("opcua source: %s", message)
        if failed == len(nodes):
            raise ConnectionError("no node could be subscribed")

    def _on_change(self, node: Node, value: Any, data: DataChangeNotif) -> None:
        index = self._index.get(node.nodeid.to_string())
        if index is None:
            return
        spec = self.options.nodes[index]
        dv = data.monitored_item.Value
        stamp = dv.SourceTimestamp or dv.ServerTimestamp
        ts = stamp.timestamp() if stamp is not None else time.time()
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            self._latest.set(index, math.nan, ts=ts)  # the server has no good value
            return
        if isinstance(value, bool):
            number = 1.0 if value else 0.0
        elif isinstance(value, int | float) and math.isfinite(float(value)):
            number = float(value)
        else:
            message = f"node {spec.node_id} ({spec.name}): {type(value).__name__} is not a number"
            self._health.bad_row(message)
            self._bad.warning("opcua source: bad value skipped: %s", message)
            return
        self._latest.set(index, number, ts=ts)
