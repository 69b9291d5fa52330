"""Unit context (baseline + age) for model inputs: literal arrays, causality, errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.data.context import (
    add_context,
    stats_rows,
    unit_baseline,
    unit_last_window,
    unit_windows,
)
from fedge.errors import DataError
from fedge.spec import ModelSpec

SPEC = ModelSpec(n_features=2, window=4, context="history", baseline_cycles=2)
HEAD = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 30.0], [7.0, 40.0], [9.0, 50.0]], np.float32)


def test_input_widths() -> None:
    assert (SPEC.input_features, SPEC.stats_features) == (5, 3)
    plain = ModelSpec(n_features=2, context="window")
    assert (plain.input_features, plain.stats_features) == (2, 2)


def test_baseline_is_the_mean_of_the_first_cycles_seen_so_far() -> None:
    got = unit_baseline(HEAD, baseline_cycles=2, end_cycles=[0, 1, 5])
    np.testing.assert_array_equal(got, [[1.0, 10.0], [2.0, 15.0], [2.0, 15.0]])
    # A head shorter than baseline_cycles: the mean of all of it.
    got = unit_baseline(HEAD[:3], baseline_cycles=10, end_cycles=[50])
    np.testing.assert_array_equal(got, [[3.0, 20.0]])


def test_add_context_layout() -> None:
    windows = np.stack([HEAD[0:4], HEAD[1:5]])
    got = add_context(windows, end_cycles=[3, 4], head=HEAD, spec=SPEC)
    assert got.dtype == np.float32
    # [sensors, baseline (mean of cycles 0-1 = [2, 15]), age = cycle + 1]
    np.testing.assert_array_equal(
        got,
        [
            [[1, 10, 2, 15, 1], [3, 20, 2, 15, 2], [5, 30, 2, 15, 3], [7, 40, 2, 15, 4]],
            [[3, 20, 2, 15, 2], [5, 30, 2, 15, 3], [7, 40, 2, 15, 4], [9, 50, 2, 15, 5]],
        ],
    )


def test_window_context_passes_windows_through() -> None:
    spec = ModelSpec(n_features=2, window=4, context="window")
    windows = np.ones((4, 4, 2), np.float64)
    got = add_context(windows, end_cycles=[3, 4, 5, 6], head=None, spec=spec)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, windows)


def test_stats_rows() -> None:
    values = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(
        stats_rows(values, cycles=np.array([0, 1]), spec=SPEC), [[1, 2, 1], [3, 4, 2]]
    )
    plain = ModelSpec(n_features=2, context="window")
    np.testing.assert_array_equal(stats_rows(values, cycles=np.array([0, 1]), spec=plain), values)


def test_whole_unit_helpers_agree_and_are_causal() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(12, 2)).astype(np.float32)
    x, y = unit_windows(values, np.arange(12, dtype=np.float32), spec=SPEC)
    assert x.shape == (9, 4, 5)
    np.testing.assert_array_equal(y, np.arange(3, 12))
    np.testing.assert_array_equal(unit_last_window(values, spec=SPEC), x[-1])
    # What a window sees never depends on later readings.
    for end in range(3, 12):
        np.testing.assert_array_equal(unit_last_window(values[: end + 1], spec=SPEC), x[end - 3])


def test_short_unit_last_window_is_padded_with_sane_context() -> None:
    values = np.array([[1.0, 2.0]], np.float32)  # one cycle so far
    got = unit_last_window(values, spec=SPEC)
    np.testing.assert_array_equal(got[:, :4], [[1, 2, 1, 2]] * 4)
    np.testing.assert_array_equal(got[:, 4], [1, 1, 1, 1])  # padding repeats cycle 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"windows": np.ones((1, 4, 3))}, "shape"),
        ({"head": None}, "head"),
        ({"head": np.ones((4, 3))}, "head"),
        ({"end_cycles": [2.5]}, "integer"),
        ({"end_cycles": [-1]}, ">= 0"),
        ({"end_cycles": [3, 4]}, "1 integer"),
    ],
)
def test_add_context_rejects_bad_input(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "windows": np.ones((1, 4, 2)), "end_cycles": [3], "head": HEAD, "spec": SPEC
    }
    args.update(kwargs)
    with pytest.raises(DataError, match=match):
        add_context(**args)  # type: ignore[arg-type]


def test_baseline_rejects_an_empty_head() -> None:
    with pytest.raises(DataError, match="non-empty"):
        unit_baseline(np.zeros((0, 2)), baseline_cycles=2, end_cycles=[3])
