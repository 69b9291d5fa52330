"""Server-side bounds: weight cap and norm bound, fixed and median-derived, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.errors import RejectReason, UpdateRejectedError
from fedge.strategies.reducers import (
    BoundedReducer,
    CoordinateMedian,
    StreamingMean,
    UpdateBounds,
)

BASE = {"w": np.array([1.0, 1.0], np.float32)}


def at(dx: float, dy: float) -> dict[str, np.ndarray]:
    """An update whose delta from BASE is (dx, dy)."""
    return {"w": BASE["w"] + np.array([dx, dy], np.float32)}


def bounded(bounds: UpdateBounds, inner: type = StreamingMean) -> BoundedReducer:
    return BoundedReducer(inner(BASE), BASE, bounds)


def test_clip_scales_the_delta_to_the_bound_and_caps_the_weight() -> None:
    r = bounded(UpdateBounds(max_norm=1.0, max_weight=30.0))
    r.add(at(3.0, 4.0), 10.0)  # norm 5 -> (0.6, 0.8), weight 10
    r.add(at(0.0, -0.5), 1e8)  # inside the bound, weight capped at 30
    got = r.result()["w"] - BASE["w"]
    # (10 * (0.6, 0.8) + 30 * (0, -0.5)) / 40 = (0.15, -0.175)
    np.testing.assert_allclose(got, [0.15, -0.175], rtol=1e-6)
    assert (r.report.clipped, r.report.weight_capped) == (1, 1)


def test_reject_refuses_a_long_update_and_keeps_the_round_unchanged() -> None:
    r = bounded(UpdateBounds(max_norm=1.0, norm_action="reject"))
    r.add(at(0.5, 0.0), 1.0)
    with pytest.raises(UpdateRejectedError) as info:
        r.add(at(3.0, 4.0), 1.0)
    assert info.value.reason is RejectReason.NORM_TOO_LARGE
    assert (r.count, r.inner.count) == (1, 1)
    np.testing.assert_allclose(r.result()["w"] - BASE["w"], [0.5, 0.0])


def test_non_finite_update_is_malformed() -> None:
    r = bounded(UpdateBounds(max_norm=1.0))
    with pytest.raises(UpdateRejectedError) as info:
        r.add({"w": np.array([np.inf, 0.0], np.float32)}, 1.0)
    assert info.value.reason is RejectReason.MALFORMED


def test_median_derived_norm_bound_clips_at_the_close() -> None:
    # norms 1, 2, 3, 20 -> median 2.5; bound 2 x 2.5 = 5: only the 20 is clipped, to 5
    r = bounded(UpdateBounds(norm_median_multiple=2.0))
    for delta in ((1, 0), (0, 2), (-3, 0), (0, 20)):
        r.add(at(*delta), 1.0)
    assert r.inner.count == 0  # nothing reaches the mean before the close
    got = r.result()["w"] - BASE["w"]
    # ((1, 0) + (0, 2) + (-3, 0) + (0, 5)) / 4 = (-0.5, 1.75)
    np.testing.assert_allclose(got, [-0.5, 1.75], rtol=1e-6)
    assert r.report.norm_bound == pytest.approx(5.0)
    assert r.report.clipped == 1


def test_median_derived_reject_is_counted_in_the_report() -> None:
    r = bounded(UpdateBounds(norm_median_multiple=2.0, norm_action="reject"))
    for delta in ((1, 0), (0, 2), (-3, 0), (0, 20)):
        r.add(at(*delta), 1.0)
    got = r.result()["w"] - BASE["w"]
    np.testing.assert_allclose(got, [-2 / 3, 2 / 3], rtol=1e-6)
    assert r.report.rejected == {"norm_too_large": 1}
    assert r.accepted == 3
    r.result()  # a second call does not count again
    assert r.report.rejected == {"norm_too_large": 1}


def test_median_derived_weight_cap() -> None:
    # weights 10, 20, 30, 1e8 -> median 25; cap 2 x 25 = 50
    r = bounded(UpdateBounds(weight_median_multiple=2.0))
    for w, delta in ((10, (1, 0)), (20, (1, 0)), (30, (1, 0)), (1e8, (0, 1))):
        r.add(at(*delta), w)
    got = r.result()["w"] - BASE["w"]
    np.testing.assert_allclose(got, [60 / 110, 50 / 110], rtol=1e-6)
    assert r.report.weight_cap == pytest.approx(50.0)
    assert r.report.weight_capped == 1


def test_fixed_and_median_bounds_combine_to_the_tighter() -> None:
    r = bounded(UpdateBounds(max_norm=4.0, norm_median_multiple=10.0))
    for delta in ((1, 0), (1, 0), (0, 8)):
        r.add(at(*delta), 1.0)  # (0, 8) clipped to 4 on arrival; median 1 -> 10 allows it
    got = r.result()["w"] - BASE["w"]
    np.testing.assert_allclose(got, [2 / 3, 4 / 3], rtol=1e-6)
    assert r.report.clipped == 1 and r.report.norm_bound == pytest.approx(4.0)


def test_uniform_weights_ignore_claimed_counts() -> None:
    r = bounded(UpdateBounds(uniform_weights=True))
    r.add(at(1, 0), 1e8)
    r.add(at(0, 1), 1.0)
    np.testing.assert_allclose(r.result()["w"] - BASE["w"], [0.5, 0.5])


def test_bounds_wrap_a_robust_reducer() -> None:
    r = bounded(UpdateBounds(max_norm=1.0), inner=CoordinateMedian)
    for delta in ((0.5, 0), (0.25, 0), (300, 400)):  # the last becomes (0.6, 0.8)
        r.add(at(*delta), 1.0)
    np.testing.assert_allclose(r.result()["w"] - BASE["w"], [0.5, 0.0], rtol=1e-6)
    r.close()


@pytest.mark.parametrize("name", ["max_weight", "max_norm", "norm_median_multiple"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_bounds_must_be_positive(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        UpdateBounds(**{name: value})  # type: ignore[arg-type]


def test_any_convex_combination_stays_inside_the_norm_bound() -> None:
    rng = np.random.default_rng(0)
    bound = 0.7
    r = bounded(UpdateBounds(max_norm=bound))
    for _ in range(50):
        r.add(at(*rng.normal(0, 5, 2)), float(rng.uniform(1, 1e6)))
    assert float(np.linalg.norm(r.result()["w"] - BASE["w"])) <= bound * (1 + 1e-6)
