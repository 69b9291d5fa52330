"""Modbus register decoding (against pymodbus's own encoder) and read planning."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from edge_agent.sources.modbus import (
    DATATYPES,
    ModbusChannel,
    ModbusOptions,
    ModbusSource,
    decode,
    plan_reads,
)
from fedge.errors import ConfigError

RANGES = {
    "int16": st.integers(-(2**15), 2**15 - 1),
    "uint16": st.integers(0, 2**16 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1),
    "uint32": st.integers(0, 2**32 - 1),
    "float32": st.floats(width=32, allow_nan=False, allow_infinity=False),
}


def _channel(kind: str, order: Literal["big", "little"], **extra: object) -> ModbusChannel:
    return ModbusChannel.model_validate(
        {"name": "x", "address": 0, "type": kind, "word_order": order, **extra}
    )


@pytest.mark.parametrize("kind", sorted(RANGES))
@pytest.mark.parametrize("order", ["big", "little"])
@given(data=st.data())
def test_decode_inverts_pymodbus_encoding(
    kind: str, order: Literal["big", "little"], data: st.DataObject
) -> None:
    value = data.draw(RANGES[kind])
    registers = ModbusTcpClient.convert_to_registers(value, DATATYPES[kind], word_order=order)
    assert len(registers) == _channel(kind, order).width
    assert decode(registers, _channel(kind, order)) == float(
        np.float32(value) if kind == "float32" else value
    )


def test_word_order_and_scaling_by_hand() -> None:
    # 0x0001_0002 = 65538: "big" puts the high word first, "little" the low word.
    assert decode([1, 2], _channel("uint32", "big")) == 65538.0
    assert decode([2, 1], _channel("uint32", "little")) == 65538.0
    assert decode([0xFFFF], _channel("int16", "big")) == -1.0
    assert decode([0xFFFF], _channel("uint16", "big")) == 65535.0
    # 3.5 as IEEE 754 single precision is 0x4060_0000.
    assert decode([0x4060, 0x0000], _channel("float32", "big")) == 3.5
    # A tenths-of-a-degree register with an offset: 415 * 0.1 - 40 = 1.5
    assert decode([415], _channel("int16", "big", scale=0.1, offset=-40.0)) == pytest.approx(1.5)


def test_adjacent_channels_share_one_request() -> None:
    chans = [
        ModbusChannel(name="a", address=0, type="uint16"),
        ModbusChannel(name="b", address=1, type="float32"),  # 1-2
        ModbusChannel(name="c", address=3, type="int16"),
        ModbusChannel(name="d", address=10, type="int16"),  # a gap of 6
        ModbusChannel.model_validate(
            {"name": "e", "address": 0, "register": "input", "type": "int16"}
        ),
        ModbusChannel.model_validate({"name": "f", "address": 0, "slave": 7}),
    ]
    blocks = plan_reads(chans, default_unit=1)
    summary = [
        (b.unit, b.register, b.start, b.count, [c.name for _, c in b.channels]) for b in blocks
    ]
    assert summary == [
        (1, "holding", 0, 4, ["a", "b", "c"]),
        (1, "holding", 10, 1, ["d"]),
        (1, "input", 0, 1, ["e"]),
        (7, "holding", 0, 1, ["f"]),
    ]
    gapped = plan_reads(chans[:4], default_unit=1, max_gap=6)
    assert [(b.start, b.count) for b in gapped] == [(0, 11)]
    # The sensor_names index travels with each channel.
    assert [i for b in blocks for i, _ in b.channels] == [0, 1, 2, 3, 4, 5]


def test_requests_never_exceed_125_registers() -> None:
    chans = [ModbusChannel(name=f"c{i}", address=2 * i, type="uint32") for i in range(100)]
    blocks = plan_reads(chans, default_unit=1)
    assert [b.count for b in blocks] == [124, 76]
    assert sum(len(b.channels) for b in blocks) == 100


def test_options_are_validated() -> None:
    base = {"host": "10.0.0.5", "channels": [{"name": "t", "address": 1}]}
    src = ModbusSource.from_options({**base, "slave": 3})
    assert src.options.unit_id == 3 and src.sensor_names == ("t",)
    with pytest.raises(ConfigError, match=r"channels\.0\.type"):
        ModbusSource.from_options(
            {**base, "channels": [{"name": "t", "address": 1, "type": "f64"}]}
        )
    with pytest.raises(ConfigError, match=r"channels\.0\.register"):
        ModbusSource.from_options(
            {**base, "channels": [{"name": "t", "address": 1, "register": "coil"}]}
        )
    with pytest.raises(ConfigError, match="runs past register 65535"):
        ModbusSource.from_options(
            {**base, "channels": [{"name": "t", "address": 65535, "type": "float32"}]}
        )
    with pytest.raises(ConfigError, match="unique"):
        ModbusSource.from_options({**base, "channels": [{"name": "t", "address": 1}] * 2})
    assert ModbusOptions.model_validate(base).poll_interval_s == 1.0
