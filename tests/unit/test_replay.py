"""ReplayGuard: nonces once, a freshness window, bounded memory that fails closed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.errors import ConfigError, RejectReason, SignatureError
from fedge.signing import ReplayGuard

T0 = 1_700_000_000.0


def _reason(guard: ReplayGuard, signer: str, nonce: str, ts: float, now: float) -> RejectReason:
    with pytest.raises(SignatureError) as exc:
        guard.check(signer, nonce, ts, now=now)
    return exc.value.reason


def test_window_edges() -> None:
    guard = ReplayGuard(max_age_s=10.0, max_future_s=2.0)
    guard.check("a", "n1", T0 - 10.0, now=T0)  # exactly max_age old: still inside
    guard.check("a", "n2", T0 + 2.0, now=T0)  # exactly max_future ahead: still inside
    assert _reason(guard, "a", "n3", T0 - 10.001, T0) is RejectReason.STALE
    assert _reason(guard, "a", "n4", T0 + 2.001, T0) is RejectReason.CLOCK_SKEW
    assert len(guard) == 2


def test_same_nonce_is_a_replay_only_for_the_same_signer() -> None:
    guard = ReplayGuard()
    guard.check("a", "n", T0, now=T0)
    assert _reason(guard, "a", "n", T0, T0 + 1) is RejectReason.REPLAY
    guard.check("b", "n", T0, now=T0 + 1)


def test_expired_nonces_are_forgotten_and_their_replay_is_stale() -> None:
    guard = ReplayGuard(max_age_s=10.0)
    guard.check("a", "n", T0, now=T0)
    assert _reason(guard, "a", "n", T0, T0 + 11.0) is RejectReason.STALE
    assert len(guard) == 0


def test_capacity_evicts_oldest_and_raises_the_watermark() -> None:
    guard = ReplayGuard(max_age_s=100.0, capacity=2)
    guard.check("a", "n1", T0 + 1, now=T0 + 5)
    guard.check("a", "n2", T0 + 3, now=T0 + 5)
    guard.check("a", "n3", T0 + 2, now=T0 + 5)  # evicts n1 (ts T0+1)
    assert len(guard) == 2
    assert guard.watermark == T0 + 1
    # n1 is forgotten, but its timestamp is at the watermark: no replay possible.
    assert _reason(guard, "a", "n1", T0 + 1, T0 + 5) is RejectReason.STALE
    # A genuine but older message is refused too: the guard fails closed.
    assert _reason(guard, "b", "m", T0 + 0.5, T0 + 5) is RejectReason.STALE
    guard.check("b", "m", T0 + 1.5, now=T0 + 5)


def test_non_finite_timestamp_is_refused() -> None:
    guard = ReplayGuard()
    assert _reason(guard, "a", "n", float("nan"), T0) is RejectReason.CLOCK_SKEW


@pytest.mark.parametrize(
    "kwargs",
    [{"max_age_s": 0.0}, {"max_age_s": float("inf")}, {"max_future_s": -1.0}, {"capacity": 0}],
)
def test_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ReplayGuard(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("ab"), st.integers(0, 5), st.integers(0, 40).map(float)),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 8),
)
def test_never_accepts_a_pair_twice_and_stays_bounded(
    events: list[tuple[str, int, float]], capacity: int
) -> None:
    # A signed message is (signer, nonce, ts): the same one must never pass twice, even
    # after its nonce was forgotten (expired or evicted). Stamps come from a small set
    # so that the same message does come back.
    guard = ReplayGuard(max_age_s=30.0, max_future_s=5.0, capacity=capacity)
    accepted: set[tuple[str, int, float]] = set()
    now = T0
    for signer, nonce, stamp in events:
        now += 1.0
        ts = T0 + stamp
        try:
            guard.check(signer, str(nonce), ts, now=now)
        except SignatureError as exc:
            assert exc.reason in {RejectReason.REPLAY, RejectReason.STALE, RejectReason.CLOCK_SKEW}
            continue
        assert (signer, nonce, ts) not in accepted
        accepted.add((signer, nonce, ts))
        assert len(guard) <= capacity
