"""RoundSafeguards: what the coordinator gets per round, and the budget after a restart."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aggregator.safeguards import RoundSafeguards
from fedge.config import AggregatorConfig
from fedge.messages import DpConfig, TrainingConfig
from fedge.privacy import server_clip_bound
from fedge.privacy.accountant import PrivacyAccountant
from fedge.strategies.reducers import BoundedReducer, CoordinateMedian, StreamingMean

TEMPLATE = {"w": np.zeros(4, np.float32)}
DP = DpConfig(clip_norm=1.0, noise_multiplier=2.0, expected_clients=4)


def config(**kwargs: object) -> AggregatorConfig:
    return AggregatorConfig(**kwargs)  # type: ignore[arg-type]


def test_without_bounds_the_reducer_is_unchanged() -> None:
    guards = RoundSafeguards(config(), n_params=4)
    reducer = StreamingMean(TEMPLATE)
    assert guards.wrap(reducer, "train", TEMPLATE) is reducer
    assert guards.close_round(reducer, task="train", published=True).clipped is None


def test_stats_and_evaluation_rounds_are_never_bounded() -> None:
    guards = RoundSafeguards(config(robust={"max_update_norm": 1.0}), n_params=4)
    reducer = StreamingMean(TEMPLATE)
    assert guards.wrap(reducer, "stats", TEMPLATE) is reducer
    assert guards.wrap(None, "evaluate", {}) is None


def test_dp_bounds_weigh_equally_and_clip_above_the_noise() -> None:
    guards = RoundSafeguards(config(training=TrainingConfig(dp=DP)), n_params=400)
    wrapped = guards.wrap(CoordinateMedian(TEMPLATE), "train", TEMPLATE)
    assert isinstance(wrapped, BoundedReducer)
    assert wrapped.bounds.uniform_weights is True
    assert wrapped.bounds.max_norm == pytest.approx(server_clip_bound(DP, 400))  # 1 + 1 * 26
    assert wrapped.bounds.max_norm == pytest.approx(27.0)
    # a fixed bound tighter than the DP one wins
    tight = RoundSafeguards(config(training=TrainingConfig(dp=DP),
                                   robust={"max_update_norm": 5.0}), n_params=400)
    assert tight.bounds.max_norm == 5.0


def test_restart_charges_the_rounds_already_published() -> None:
    guards = RoundSafeguards(config(training=TrainingConfig(dp=DP)), n_params=4,
                             completed_rounds=3)
    reducer = guards.wrap(StreamingMean(TEMPLATE), "train", TEMPLATE)
    assert reducer is not None
    for i in range(4):
        reducer.add({"w": np.full(4, 0.1 * i, np.float32)}, 1.0)
    safety = guards.close_round(reducer, task="train", published=True)
    expected = PrivacyAccountant(1e-5)
    expected.record(2.0, count=4)  # 3 before the restart + this one, 4 of 4 participants
    assert safety.dp_epsilon == pytest.approx(expected.epsilon)


def test_a_failed_round_spends_no_budget_and_sampling_amplifies() -> None:
    guards = RoundSafeguards(config(training=TrainingConfig(dp=DP),
                                    privacy={"population": 40, "delta": 1e-6}), n_params=4)
    reducer = guards.wrap(StreamingMean(TEMPLATE), "train", TEMPLATE)
    assert reducer is not None
    for _ in range(2):
        reducer.add({"w": np.zeros(4, np.float32)}, 1.0)
    failed = guards.close_round(reducer, task="train", published=False)
    assert failed.dp_epsilon == 0.0 and failed.dp_delta == 1e-6
    reducer = guards.wrap(StreamingMean(TEMPLATE), "train", TEMPLATE)
    assert reducer is not None
    for _ in range(2):
        reducer.add({"w": np.zeros(4, np.float32)}, 1.0)
    done = guards.close_round(reducer, task="train", published=True)
    expected = PrivacyAccountant(1e-6)
    expected.record(2.0 * math.sqrt(2 / 4), 2 / 40)  # z_eff for 2 of 4, q = 2 / 40
    assert done.dp_epsilon == pytest.approx(expected.epsilon)
    local = PrivacyAccountant(1e-6)
    local.record(1.0)  # z / sqrt(4), no sampling: the aggregator knows who took part
    assert done.dp_epsilon_local == pytest.approx(local.epsilon)


def test_robust_reducer_under_dp_reports_the_local_guarantee() -> None:
    guards = RoundSafeguards(config(training=TrainingConfig(dp=DP), reducer="median"),
                             n_params=4)
    reducer = guards.wrap(CoordinateMedian(TEMPLATE), "train", TEMPLATE)
    assert reducer is not None
    for _ in range(4):
        reducer.add({"w": np.zeros(4, np.float32)}, 1.0)
    reducer.result()
    safety = guards.close_round(reducer, task="train", published=True)
    assert safety.dp_epsilon == safety.dp_epsilon_local
