"""The modbus source against a real pymodbus TCP server that changes, dies and comes back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.sources.base import SensorSample
from edge_agent.sources.modbus import DATATYPES, ModbusSource
from tests.support import free_port, wait_for_port, wait_until

pytestmark = pytest.mark.integration

HOLDING, INPUT = 3, 4  # the function codes pymodbus's datastore is addressed by
COUNTER = 50  # holding register the server increments every 20 ms

# (name, register, address, type, word order, value written with pymodbus's encoder)
TYPED: list[tuple[str, str, int, str, str, float]] = [
    ("i16", "holding", 0, "int16", "big", -1234),
    ("u16", "holding", 1, "uint16", "big", 65000),
    ("i32_big", "holding", 2, "int32", "big", -123456789),
    ("i32_little", "holding", 4, "int32", "little", 2_000_000_001),
    ("u32_big", "holding", 6, "uint32", "big", 4_000_000_000),
    ("u32_little", "holding", 8, "uint32", "little", 65538),
    ("f32_big", "input", 0, "float32", "big", 3.5),
    ("f32_little", "input", 2, "float32", "little", -1013.25),
]


class ModbusServerThread:
    """A pymodbus TCP server (one device, id 1) on its own asyncio loop in a thread."""

    def __init__(self, port: int, *, registers: int = 100) -> None:
        self.port = port
        self.registers = registers
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: ModbusTcpServer | None = None
        self._ticker: Future[None] | None = None
        self._thread.start()

    def _call(self, coro: Any, timeout: float = 5.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        def blocks() -> list[SimData]:
            return [SimData(0, count=self.registers, values=0, datatype=DataType.REGISTERS)]

        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        device = SimDevice(id=1, simdata=(bits, bits, blocks(), blocks()))

        async def serve() -> None:
            self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
            await self._server.serve_forever(background=True)

        self._call(serve())
        wait_for_port(self.port)
        self._ticker = asyncio.run_coroutine_threadsafe(self._tick(), self._loop)

    async def _tick(self) -> None:
        n = 0
        while True:
            n = (n + 1) % 65536
            assert self._server is not None
            await self._server.async_setValues(1, HOLDING, COUNTER, [n])
            await asyncio.sleep(0.02)

    def write(self, register: str, address: int, registers: list[int]) -> None:
        assert self._server is not None
        code = HOLDING if register == "holding" else INPUT
        self._call(self._server.async_setValues(1, code, address, registers))

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._server is not None:
            self._call(self._server.shutdown())  # type: ignore[no-untyped-call]
            self._server = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


@pytest.fixture
def modbus_server() -> Iterator[ModbusServerThread]:
    server = ModbusServerThread(free_port())
    server.start()
    try:
        yield server
    finally:
        server.close()


def _write_typed(server: ModbusServerThread) -> None:
    for _, register, address, kind, order, value in TYPED:
        regs = ModbusTcpClient.convert_to_registers(value, DATATYPES[kind], word_order=order)  # type: ignore[arg-type]
        server.write(register, address, regs)


def _source(port: int, channels: list[dict[str, Any]], **extra: Any) -> ModbusSource:
    return ModbusSource.from_options(
        {
            "host": "127.0.0.1",
            "port": port,
            "channels": channels,
            "poll_interval_s": 0.02,
            "timeout_s": 0.5,
            "reconnect_initial_s": 0.05,
            "reconnect_max_s": 0.3,
            "healthy_after_s": 0.2,
            **extra,
        }
    )


def _typed_channels() -> list[dict[str, Any]]:
    channels: list[dict[str, Any]] = [
        {"name": n, "register": r, "address": a, "type": t, "word_order": o}
        for n, r, a, t, o, _ in TYPED
    ]
    channels.append({"name": "counter", "address": COUNTER})
    channels.append({"name": "scaled", "address": 20, "type": "int16", "scale": 0.1, "offset": -40})
    return channels


def _next(src: ModbusSource, *, timeout: float = 10.0) -> SensorSample:
    """The next reading, waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sample = src.read()
        if sample is not None:
            return sample
        time.sleep(0.01)
    raise AssertionError(f"no reading within {timeout} s; {src.health()}")


def test_every_type_and_word_order_then_changes_and_a_restart(
    modbus_server: ModbusServerThread,
) -> None:
    _write_typed(modbus_server)
    modbus_server.write("holding", 20, [415])  # 41.5 - 40 = 1.5
    src = _source(modbus_server.port, _typed_channels())
    assert src.requests_per_poll == 4  # holding 0-9, holding 20, holding 50, input 0-3
    src.start()
    try:
        first = _next(src)
        expected = [float(np.float32(v)) if t == "float32" else float(v) for *_, t, _o, v in TYPED]
        np.testing.assert_array_equal(first.values[: len(TYPED)], expected)
        assert first.values[-1] == pytest.approx(1.5)
        assert first.unit is None and first.ts is not None
        assert src.health().state == "ok"

        # The registers change: the counter the server increments keeps rising.
        counts = [_next(src).values[len(TYPED)] for _ in range(10)]
        assert counts[-1] > counts[0]

        # The device goes away: health says so, the source keeps retrying.
        modbus_server.stop()
        assert wait_until(lambda: src.health().state == "reconnecting", timeout=10)
        errors = src.health().errors
        assert wait_until(lambda: src.health().errors > errors, timeout=10)  # it retries
        while src.read() is not None:  # whatever was polled before the loss
            pass

        # ... and comes back with other values: readings resume, health is ok again.
        modbus_server.start()
        modbus_server.write("holding", 0, [7])
        assert wait_until(lambda: src.health().state == "ok", timeout=10)
        assert wait_until(lambda: (s := src.read()) is not None and s.values[0] == 7.0, timeout=10)
        health = src.health()
        assert health.reconnects >= 1 and health.readings > 11
        assert "127.0.0.1" in (health.last_error or "")
    finally:
        src.close()
    assert not src._worker.running  # close() stopped the poller
    assert src.health().state == "down"


def test_a_refused_read_gives_nan_for_its_channels_only(modbus_server: ModbusServerThread) -> None:
    modbus_server.write("holding", 5, [99])
    src = _source(
        modbus_server.port,
        [
            {"name": "ok", "address": 5},
            {"name": "missing", "address": 500},  # outside the device's 100 registers
            {"name": "other_device", "address": 5, "unit_id": 9},
        ],
    )
    src.start()
    try:
        sample = _next(src)
        assert sample.values[0] == 99.0
        assert np.isnan(sample.values[1])
        assert wait_until(lambda: src.health().errors >= 2, timeout=5)
        assert "exception code" in (src.health().last_error or "")
        assert src.health().state == "ok"  # the connection is fine
    finally:
        src.close()


def test_no_server_at_all_is_reconnecting_not_fatal() -> None:
    src = _source(free_port(), [{"name": "x", "address": 0}])
    src.start()
    try:
        assert wait_until(lambda: src.health().errors >= 2, timeout=10)
        assert src.health().state == "reconnecting"
        assert src.read() is None
    finally:
        src.close()
    assert not src._worker.running
