"""The ``modbus`` source: polling a Modbus TCP device (PLC, drive, power meter).

Each channel is a register (``input`` or ``holding``) at an ``address`` of a device
(``unit_id``, a.k.a. slave id), holding an ``int16``/``uint16`` (one register) or an
``int32``/``uint32``/``float32`` (two registers, ``word_order`` "big" = high word
first, the Modbus convention, or "little"); the reading is ``raw * scale + offset``.
Decoding is pymodbus's own ``convert_from_registers``. Channels at adjacent addresses
are fetched in one request (at most 125 registers; ``max_gap`` allows reading over
a few unused registers in between).

Every ``poll_interval_s`` one reading of all channels is queued; ``read()`` hands
them out oldest first. A request the device refuses (an exception response such as
"illegal data address") gives NaN for its channels and counts as an error; a lost
connection or a device that stops answering ends the session, health goes to
``reconnecting`` and the connection is retried with backoff and jitter
(:func:`edge_agent.sources.supervisor.supervise`; pymodbus's sync client does not
reconnect by itself). The sync client runs in one background thread.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Self

import numpy as np
from pydantic import AliasChoices, BaseModel, Field, StringConstraints, model_validator
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from edge_agent.sources.base import BaseSource, SensorSample, SourceOptions, expect_options
from edge_agent.sources.inputs import LimitedLog
from edge_agent.sources.supervisor import ReconnectOptions, Worker

__all__ = ["ModbusChannel", "ModbusOptions", "ModbusSource"]

log = logging.getLogger(__name__)

DataType = Literal["int16", "uint16", "int32", "uint32", "float32"]
DATATYPES: dict[str, ModbusTcpClient.DATATYPE] = {
    "int16": ModbusTcpClient.DATATYPE.INT16,
    "uint16": ModbusTcpClient.DATATYPE.UINT16,
    "int32": ModbusTcpClient.DATATYPE.INT32,
    "uint32": ModbusTcpClient.DATATYPE.UINT32,
    "float32": ModbusTcpClient.DATATYPE.FLOAT32,
}
# The Modbus spec caps one read of holding/input registers at 125.
MAX_REGISTERS_PER_READ = 125
UnitId = Annotated[int, Field(ge=0, le=255)]


class ModbusChannel(SourceOptions):
    """One register value of one device."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    address: Annotated[int, Field(ge=0, le=65535)]
    # "register" in the config; named table here as pydantic's BaseModel has .register
    table: Literal["input", "holding"] = Field(default="holding", validation_alias="register")
    type: DataType = "uint16"
    word_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit_id: UnitId | None = Field(default=None, validation_alias=AliasChoices("unit_id", "slave"))

    @property
    def width(self) -> int:
        """Registers the value occupies."""
        return int(DATATYPES[self.type].value[1])

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if self.address + self.width > 65536:
            raise ValueError(f"{self.type} at {self.address} runs past register 65535")
        return self


class ModbusOptions(ReconnectOptions):
    """Options of the ``modbus`` source (see the module docstring)."""

    host: Annotated[str, StringConstraints(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit_id: UnitId = Field(default=1, validation_alias=AliasChoices("unit_id", "slave"))
    channels: Annotated[tuple[ModbusChannel, ...], Field(min_length=1)]
    poll_interval_s: Annotated[float, Field(ge=0.001, le=3600.0)] = 1.0
    # Bounded so a dead device cannot hold close() longer than its 2 s budget.
    timeout_s: Annotated[float, Field(gt=0.0, le=1.5)] = 1.0
    max_gap: Annotated[int, Field(ge=0, le=100)] = 0
    buffer: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError("channel names must be unique")
        return self


@dataclass(frozen=True)
class _Block:
    """One read request: contiguous registers of one table of one device."""

    unit: int
    register: Literal["input", "holding"]
    start: int
    count: int
    channels: tuple[tuple[int, ModbusChannel], ...]  # (index in sensor_names, channel)


def plan_reads(
    channels: Sequence[ModbusChannel], *, default_unit: int, max_gap: int = 0
) -> list[_Block]:
    """Group channels into as few read requests as the 125-register limit allows."""
    keyed = sorted(
        enumerate(channels),
        key=lambda ic: (
            ic[1].unit_id if ic[1].unit_id is not None else default_unit,
            ic[1].table,
            ic[1].address,
        ),
    )
    blocks: list[_Block] = []
    current: list[tuple[int, ModbusChannel]] = []
    unit = -1
    register: Literal["input", "holding"] = "holding"
    start = end = 0

    def flush() -> None:
        if current:
            blocks.append(_Block(unit, register, start, end - start, tuple(current)))

    for index, ch in keyed:
        ch_unit = ch.unit_id if ch.unit_id is not None else default_unit
        ch_end = ch.address + ch.width
        joins = (
            current
            and ch_unit == unit
            and ch.table == register
            and ch.address <= end + max_gap
            and max(end, ch_end) - start <= MAX_REGISTERS_PER_READ
        )
        if joins:
            current.append((index, ch))
            end = max(end, ch_end)
            continue
        flush()
        current = [(index, ch)]
        unit, register, start, end = ch_unit, ch.table, ch.address, ch_end
    flush()
    return blocks


def decode(registers: Sequence[int], channel: ModbusChannel) -> float:
    """The channel's value from its registers (pymodbus's decoder), scaled and offset."""
    raw = ModbusTcpClient.convert_from_registers(
        list(registers), DATATYPES[channel.type], word_order=channel.word_order
    )
    if not isinstance(raw, int | float):  # not for the scalar types allowed above
        raise TypeError(f"{channel.type} decoded to {type(raw).__name__}")
    return float(raw) * channel.scale + channel.offset


class ModbusSource(BaseSource):
    """Registers of a Modbus TCP device, polled at a fixed interval."""

    kind: ClassVar[str] = "modbus"
    Options: ClassVar[type[BaseModel]] = ModbusOptions

    def __init__(self, options: ModbusOptions) -> None:
        super().__init__()
        self.options = options
        self._blocks = plan_reads(
            options.channels, default_unit=options.unit_id, max_gap=options.max_gap
        )
        self._queue: deque[SensorSample] = deque(maxlen=options.buffer)
        self._worker = Worker(f"source-modbus-{options.host}:{options.port}")
        self._bad = LimitedLog(log)
        self.polls = 0

    @classmethod
    def from_model(cls, options: BaseModel, *, seed: int) -> Self:
        return cls(expect_options(options, ModbusOptions))

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.options.channels)

    @property
    def requests_per_poll(self) -> int:
        """Read requests one poll makes (channels grouped into blocks)."""
        return len(self._blocks)

    def start(self) -> None:
        if not self._worker.stop_event.is_set():
            self._worker.start(self._supervise)

    def close(self) -> None:
        self._worker.stop(timeout=2.0)
        self._health.set_state("down")

    def read(self) -> SensorSample | None:
        try:
            sample = self._queue.popleft()
        except IndexError:
            return None
        self._health.reading(sample.ts if sample.ts is not None else time.time())
        return sample

    # Polling ------------------------------------------------------------------------
    def _supervise(self) -> None:
        self._worker.supervise(self._session, self.options, on_failure=self._on_failure)

    def _on_failure(self, exc: BaseException, delay_s: float) -> None:
        message = f"{self.options.host}:{self.options.port}: {exc}"
        self._health.error(message, state="reconnecting")
        log.warning("modbus source %s; reconnecting in %.1f s", message, delay_s)

    def _session(self) -> None:
        o = self.options
        stop = self._worker.stop_event
        client = ModbusTcpClient(o.host, port=o.port, timeout=o.timeout_s, retries=0)
        try:
            if not client.connect():  # type: ignore[no-untyped-call]
                raise ConnectionError(f"cannot connect to {o.host}:{o.port}")
            connected = False
            due = time.monotonic()
            while not stop.is_set():
                ts = time.time()
                try:
                    values = self._poll(client)
                except ModbusException as exc:
                    raise ConnectionError(str(exc)) from exc
                if not connected:  # the device answered: now we are really connected
                    connected = True
                    self._health.connected()
                    log.info("modbus source connected to %s:%d", o.host, o.port)
                self._queue.append(SensorSample(values=values, ts=ts))
                self.polls += 1
                due += o.poll_interval_s
                now = time.monotonic()
                if due < now:
                    due = now  # a slow device: poll again at once, do not burst to catch up
                stop.wait(due - now)
        finally:
            client.close()  # type: ignore[no-untyped-call]

    def _poll(self, client: ModbusTcpClient) -> np.ndarray:
        values = np.full(len(self.options.channels), np.nan)
        for block in self._blocks:
            read = (
                client.read_input_registers
                if block.register == "input"
                else client.read_holding_registers
            )
            response: ModbusPDU = read(block.start, count=block.count, device_id=block.unit)
            if response.isError():
                self._refused(block, response)
                continue
            registers = response.registers
            for index, ch in block.channels:
                at = ch.address - block.start
                try:
                    values[index] = decode(registers[at : at + ch.width], ch)
                except (ModbusException, TypeError, IndexError) as exc:
                    message = f"unit {block.unit} {ch.table} {ch.address} ({ch.name}): {exc}"
                    self._health.error(message)
                    self._bad.warning("modbus source: %s", message)
        return values

    def _refused(self, block: _Block, response: ModbusPDU) -> None:
        code = getattr(response, "exception_code", None)
        names = ", ".join(ch.name for _, ch in block.channels)
        message = (
            f"unit {block.unit} {block.register} registers {block.start}-"
            f"{block.start + block.count - 1} ({names}): device refused, exception code {code}"
        )
        self._health.error(message)
        self._bad.warning("modbus source: %s", message)
