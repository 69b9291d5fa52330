"""fl_round lines carry the bounds' and the privacy accountant's fields, exactly."""

from __future__ import annotations

from fedge.messages import RoundSummary, decode_message, encode_message
from fedge.points import round_points

TS = 1_700_000_000.0
TS_NS = 1_700_000_000_000_000_000


def test_round_summary_with_clipping_and_privacy_budget_exact() -> None:
    summary = RoundSummary(
        fleet="demo", round_id=3, task="train", ts=TS, outcome="completed", version=3,
        participants=4, clipped=1, dp_epsilon=2.5, dp_delta=1e-05, dp_epsilon_local=7.25,
    )
    assert [p.to_line() for p in round_points(summary)] == [
        "fl_round,fleet=demo,outcome=completed,task=train round_id=3i,version=3i,"
        "participants=4i,rejected=0i,num_examples=0i,val_examples=0i,bytes_received=0i,"
        f"duration_s=0.0,clipped=1i,dp_epsilon=2.5,dp_delta=1e-05,dp_epsilon_local=7.25 {TS_NS}"
    ]


def test_summary_without_bounds_or_dp_keeps_its_v1_bytes() -> None:
    summary = RoundSummary(fleet="demo", round_id=1, task="train", ts=TS,
                           outcome="completed", version=1, participants=2)
    payload = encode_message(summary)
    assert b"clipped" not in payload and b"dp_" not in payload
    assert decode_message(RoundSummary, payload) == summary
