"""Snapshots from what sources deliver: JSON arrays and CSV cells, refused with typed errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedge.errors import ConfigError, SensorError, SensorFault
from fedge.features import (
    VibrationConfig,
    snapshot_from_csv_field,
    snapshot_from_json,
    vibration_features,
)

FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def features_refusal(snapshot: np.ndarray) -> SensorError:
    with pytest.raises(SensorError) as info:
        vibration_features(snapshot, VibrationConfig(prefix="accel"))
    return info.value


# --- snapshot_from_json --------------------------------------------------------------


def test_json_list_of_numbers() -> None:
    out = snapshot_from_json([1, -2.5, 0, 3e-3])
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [1.0, -2.5, 0.0, 0.003])


@pytest.mark.parametrize(
    ("value", "bad"),
    [
        ([0.1, True, 0.3], 1),
        ([False] * 20, 20),
        ([0.1, [0.2, 0.3]], 1),
        ([0.1, "0.2", None], 2),
        ([{"x": 1}], 1),
    ],
)
def test_json_non_numbers_are_refused(value: list[object], bad: int) -> None:
    with pytest.raises(SensorError) as info:
        snapshot_from_json(value)
    assert info.value.fault is SensorFault.NOT_NUMERIC
    assert info.value.bad_samples == bad


@pytest.mark.parametrize("value", [{"accel": [1.0]}, "1,2,3", 3.0, None, (1.0, 2.0)])
def test_json_non_arrays_are_refused(value: object) -> None:
    with pytest.raises(SensorError) as info:
        snapshot_from_json(value)
    assert info.value.fault is SensorFault.NOT_NUMERIC


def test_json_length_and_range() -> None:
    with pytest.raises(SensorError) as info:
        snapshot_from_json([0.0] * 5, max_samples=4)
    assert info.value.fault is SensorFault.TOO_MANY_SAMPLES
    with pytest.raises(SensorError) as info:
        snapshot_from_json([])
    assert info.value.fault is SensorFault.TOO_FEW_SAMPLES
    with pytest.raises(SensorError) as info:
        snapshot_from_json([1, 10**400])
    assert info.value.fault is SensorFault.OUT_OF_RANGE
    with pytest.raises(ConfigError):
        snapshot_from_json([1.0], max_samples=0)


def test_json_nan_passes_to_the_features_refusal() -> None:
    snapshot = snapshot_from_json([float("nan")] * 2 + [0.1, 0.2] * 10)
    error = features_refusal(snapshot)
    assert error.fault is SensorFault.NON_FINITE
    assert error.bad_samples == 2


@given(st.lists(st.one_of(st.integers(-(2**62), 2**62), FINITE), min_size=1, max_size=200))
def test_json_numbers_round_trip(value: list[float]) -> None:
    out = snapshot_from_json(value)
    assert out.tolist() == [float(v) for v in value]


@given(
    st.lists(FINITE, min_size=0, max_size=50),
    st.lists(FINITE, min_size=0, max_size=50),
    st.booleans(),
)
def test_json_a_bool_anywhere_is_refused(head: list[float], tail: list[float], b: bool) -> None:
    with pytest.raises(SensorError) as info:
        snapshot_from_json([*head, b, *tail])
    assert info.value.bad_samples == 1


# --- snapshot_from_csv_field ---------------------------------------------------------


def test_csv_field_of_samples() -> None:
    out = snapshot_from_csv_field("1; -2.5 ;3e-3;.5;+4.;\t7")
    np.testing.assert_array_equal(out, [1.0, -2.5, 0.003, 0.5, 4.0, 7.0])
    np.testing.assert_array_equal(snapshot_from_csv_field("1,2", sep=","), [1.0, 2.0])


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("1;;2", 1),
        ("1;2;", 1),
        ("1;abc;x", 2),
        ("1_0;2", 1),  # float() would read 10
        ("0x10", 1),
        ("1;２", 1),  # fullwidth digit, float() would read 2
        ("1;true", 1),
        ("1 2;3", 1),
        ("1e;2", 1),
        ("1,5;2", 1),
    ],
)
def test_csv_non_numbers_are_refused(text: str, bad: int) -> None:
    with pytest.raises(SensorError) as info:
        snapshot_from_csv_field(text)
    assert info.value.fault is SensorFault.NOT_NUMERIC
    assert info.value.bad_samples == bad


def test_csv_length_and_separator() -> None:
    with pytest.raises(SensorError) as info:
        snapshot_from_csv_field("1;2;3;4;5", max_samples=4)
    assert info.value.fault is SensorFault.TOO_MANY_SAMPLES
    with pytest.raises(SensorError) as info:
        snapshot_from_csv_field("  ")
    assert info.value.fault is SensorFault.TOO_FEW_SAMPLES
    with pytest.raises(SensorError) as info:
        snapshot_from_csv_field("1" * 200)
    assert info.value.fault is SensorFault.NOT_NUMERIC
    for sep in ("", ".", " ", "e", "-"):
        with pytest.raises(ConfigError):
            snapshot_from_csv_field("1;2", sep=sep)


def test_csv_nan_passes_to_the_features_refusal() -> None:
    snapshot = snapshot_from_csv_field(";".join(["nan", "inf"] + ["0.1", "0.2"] * 10))
    error = features_refusal(snapshot)
    assert error.fault is SensorFault.NON_FINITE
    assert error.bad_samples == 2


@given(st.lists(FINITE, min_size=1, max_size=200), st.sampled_from([";", ",", "|"]))
def test_csv_round_trip(values: list[float], sep: str) -> None:
    out = snapshot_from_csv_field(sep.join(repr(v) for v in values), sep=sep)
    assert out.tolist() == values
