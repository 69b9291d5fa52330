"""The opcua source against a real asyncua server: subscriptions, auth, loss and return."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.common.node import Node
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge_agent.sources.base import SensorSample
from edge_agent.sources.opcua import OpcuaSource
from tests.support import free_port, wait_for_port, wait_until

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-" + "test"  # a throwaway server's throwaway account


@pytest.fixture(autouse=True)
def _quiet_asyncua() -> Iterator[None]:
    # asyncua logs every refused session and plain-text password at WARNING/ERROR.
    logger = logging.getLogger("asyncua")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


class _Users(UserManager):
    def __init__(self, users: dict[str, str]) -> None:
        self._users = users

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User)
        return None


class OpcuaServerThread:
    """An asyncua server on its own loop: Pump.Temp rises from first_temp, Running, Label."""

    def __init__(
        self,
        port: int,
        *,
        users: dict[str, str] | None = None,
        certificate: tuple[Path, Path] | None = None,
    ) -> None:
        self.port = port
        self._certificate = certificate
        self.url = f"opc.tcp://127.0.0.1:{port}/fedge/"
        self._users = users
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: Server | None = None
        self._ticker: Future[None] | None = None
        self.temp: Node | None = None
        self.node_ids: dict[str, str] = {}

    def _call(self, coro: Any, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self, first_temp: float) -> None:
        server = Server(user_manager=_Users(self._users) if self._users is not None else None)
        await server.init()
        server.set_endpoint(self.url)
        if self._certificate is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            cert, key = self._certificate
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
        if self._users is not None:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        idx = await server.register_namespace("urn:fedge:test")
        pump = await server.nodes.objects.add_object(idx, "Pump")
        self.temp = await pump.add_variable(idx, "Temp", first_temp)
        running = await pump.add_variable(idx, "Running", True)
        label = await pump.add_variable(idx, "Label", "P-3")
        self.node_ids = {
            "temp": self.temp.nodeid.to_string(),
            "running": running.nodeid.to_string(),
            "label": label.nodeid.to_string(),
        }
        await server.start()
        self._server = server

    async def _tick(self, value: float) -> None:
        while True:
            value += 1.0
            assert self.temp is not None
            await self.temp.write_value(value)
            await asyncio.sleep(0.05)

    def start(self, *, first_temp: float = 0.0) -> None:
        self._call(self._start(first_temp))
        wait_for_port(self.port)
        self._ticker = asyncio.run_coroutine_threadsafe(self._tick(first_temp), self._loop)

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._server is not None:
            self._call(self._server.stop())
            self._server = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


@pytest.fixture
def opcua_server() -> Iterator[OpcuaServerThread]:
    server = OpcuaServerThread(free_port())
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def opcua_auth_server() -> Iterator[OpcuaServerThread]:
    server = OpcuaServerThread(free_port(), users={"operator": PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.close()


# asyncua's client presents this application URI; its certificate must name it.
CLIENT_URI = "urn:example.org:FreeOpcUa:opcua-asyncio"
SERVER_URI = "urn:freeopcua:python:server"


def _certificate(directory: Path, name: str, uri: str, use: Any) -> tuple[Path, Path]:
    cert, key = directory / f"{name}-cert.der", directory / f"{name}-key.pem"
    asyncio.run(
        setup_self_signed_certificate(key, cert, uri, "127.0.0.1", [use], {"commonName": name})
    )
    return cert, key


@pytest.fixture
def opcua_secure_server(tmp_path: Path) -> Iterator[OpcuaServerThread]:
    certificate = _certificate(tmp_path, "server", SERVER_URI, ExtendedKeyUsageOID.SERVER_AUTH)
    server = OpcuaServerThread(free_port(), certificate=certificate)
    server.start()
    try:
        yield server
    finally:
        server.close()


def _source(server: OpcuaServerThread, names: list[str], **extra: Any) -> OpcuaSource:
    return OpcuaSource.from_options(
        {
            "url": server.url,
            "nodes": [{"name": n, "node_id": server.node_ids[n]} for n in names],
            "publishing_interval_ms": 20,
            "watchdog_s": 0.3,
            "timeout_s": 2.0,
            "reconnect_initial_s": 0.1,
            "reconnect_max_s": 0.5,
            "healthy_after_s": 0.5,
            **extra,
        }
    )


def _failed(src: OpcuaSource) -> bool:
    return src.health().errors >= 1


def _next(src: OpcuaSource, *, timeout: float = 10.0) -> SensorSample:
    """The next reading, waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sample = src.read()
        if sample is not None:
            return sample
        time.sleep(0.01)
    raise AssertionError(f"no reading within {timeout} s; {src.health()}")


def test_anonymous_subscription_follows_changes_and_survives_a_restart(
    opcua_server: OpcuaServerThread,
) -> None:
    src = _source(opcua_server, ["temp", "running"])
    src.start()
    try:
        first = _next(src)
        assert first.values[1] == 1.0  # a boolean reads as 0/1
        assert first.ts is not None and first.unit is None
        temps = [_next(src).values[0] for _ in range(5)]
        assert temps == sorted(temps) and temps[-1] > temps[0]  # the server's value rises
        assert src.health().state == "ok"

        opcua_server.stop()
        assert wait_until(lambda: src.health().state == "reconnecting", timeout=10)
        while src.read() is not None:
            pass
        opcua_server.start(first_temp=1000.0)
        assert wait_until(lambda: src.health().state == "ok", timeout=15)
        assert wait_until(
            lambda: (s := src.read()) is not None and s.values[0] >= 1000.0, timeout=10
        )
        assert src.health().reconnects >= 1
    finally:
        src.close()
    assert not src._worker.running
    assert src.health().state == "down"


def test_a_text_value_is_a_bad_row_and_an_unknown_node_an_error(
    opcua_server: OpcuaServerThread,
) -> None:
    opcua_server.node_ids["ghost"] = "ns=2;i=9999"
    src = _source(opcua_server, ["temp", "label", "ghost"])
    src.start()
    try:
        _next(src)
        assert wait_until(lambda: src.health().bad_rows >= 1, timeout=5)
        health = src.health()
        assert health.errors >= 1 and health.state == "ok"
        assert "not a number" in (health.last_error or "")
    finally:
        src.close()


def test_username_and_password(opcua_auth_server: OpcuaServerThread) -> None:
    good = _source(opcua_auth_server, ["temp"], username="operator", password=PASSWORD)
    bad = _source(opcua_auth_server, ["temp"], username="operator", password=PASSWORD + "x")
    anonymous = _source(opcua_auth_server, ["temp"])
    for src in (good, bad, anonymous):
        src.start()
    try:
        assert _next(good).values[0] >= 0.0
        for refused in (bad, anonymous):
            assert wait_until(partial(_failed, refused), timeout=10)
            assert refused.health().state == "down"
            assert refused.read() is None
    finally:
        for src in (good, bad, anonymous):
            src.close()


def test_certificate_sign_and_encrypt(
    opcua_secure_server: OpcuaServerThread, tmp_path: Path
) -> None:
    cert, key = _certificate(tmp_path, "client", CLIENT_URI, ExtendedKeyUsageOID.CLIENT_AUTH)
    secure = _source(
        opcua_secure_server, ["temp"], security_string=f"Basic256Sha256,SignAndEncrypt,{cert},{key}"
    )
    plain = _source(opcua_secure_server, ["temp"])  # the server offers no unencrypted endpoint
    missing = _source(
        opcua_secure_server,
        ["temp"],
        security_string=f"Basic256Sha256,SignAndEncrypt,{tmp_path / 'none.der'},{key}",
    )
    for src in (secure, plain, missing):
        src.start()
    try:
        assert _next(secure).values[0] >= 0.0
        assert secure.health().state == "ok"
        for refused in (plain, missing):
            assert wait_until(partial(_failed, refused), timeout=10)
            assert refused.read() is None
        assert missing.health().state == "down"  # a missing certificate file
    finally:
        for src in (secure, plain, missing):
            src.close()
