"""The coordinator delegates to its strategy: reducer, server step, participation policy.

Uses the literal-bytes helpers of ``test_coordinator``; the policies and reducers
defined here are test doubles that exercise the extension points, not product code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from aggregator.coordinator import RoundCoordinator, SaveCheckpoint
from aggregator.state import Checkpoint
from fedge.config import AggregatorConfig
from fedge.strategies import (
    BufferedReducer,
    FedAvg,
    FedAvgM,
    Params,
    RoundView,
    ServerStep,
    Strategy,
    StreamingMean,
    SyncParticipation,
)
from tests.unit.test_coordinator import (
    FLEET,
    INITIAL_TENSORS,
    MAX_UPDATE,
    SPEC,
    T0,
    TOPICS,
    TRAINABLE,
    announcement,
    frame,
    online,
    shifted,
    stats,
    summary,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("FEDGE_"):
            monkeypatch.delenv(name)
    yield


def config(**overrides: object) -> AggregatorConfig:
    settings: dict[str, object] = {
        "fleet": FLEET, "rounds": 3, "min_clients": 2, "model": SPEC,
        "round_timeout_s": 60.0, "max_update_bytes": MAX_UPDATE,
    }
    settings.update(overrides)
    return AggregatorConfig(**settings)  # type: ignore[arg-type]


def coordinator(strategy: Strategy | ServerStep, *, stats_done: bool = True,
                state: dict[str, np.ndarray] | None = None, **overrides: object
                ) -> RoundCoordinator:
    initial = Checkpoint(
        fleet=FLEET, version=0, round_id=0 if stats_done else -1, spec=SPEC,
        tensors={k: v.copy() for k, v in INITIAL_TENSORS.items()},
        strategy_state=state or {}, stats_done=stats_done,
    )
    return RoundCoordinator(config(**overrides), strategy=strategy, initial=initial,
                            trainable=TRAINABLE)


def send(coord: RoundCoordinator, device: str, round_id: int, payload: bytes,
         now: float = T0 + 1) -> None:
    assert coord.handle(TOPICS.update(round_id, device), payload, now) is not None


def moved(coord: RoundCoordinator, delta: float) -> None:
    for name in TRAINABLE:
        np.testing.assert_allclose(coord.tensors[name], INITIAL_TENSORS[name] + delta,
                                   rtol=1e-5, atol=1e-5)


def sync(min_clients: int = 2) -> SyncParticipation:
    return SyncParticipation(min_clients=min_clients, round_timeout_s=60.0)


# The parts named in config ----------------------------------------------------------------


def test_a_bare_server_step_gets_the_reducer_and_policy_config_names() -> None:
    coord = coordinator(FedAvgM(momentum=0.5), min_clients=3, target_clients=4,
                        reducer="mean", participation="sync")
    policy = coord.strategy.participation
    assert isinstance(policy, SyncParticipation)
    assert (policy.min_clients, policy.target_clients, policy.round_timeout_s) == (3, 4, 60.0)
    assert coord.strategy.name == "fedavgm"
    assert isinstance(coord.strategy.reducer_for("train", {"w": np.zeros(1)}), StreamingMean)
    assert coord.strategy.reducer_for("evaluate", {}) is None


class _UnweightedMean(BufferedReducer):
    """Test reducer: ignores the weights, so its result differs from the streaming mean's."""

    name = "test-unweighted"

    def reduce(self, updates: Sequence[Params], weights: np.ndarray) -> Params:
        return {k: np.mean(np.stack([u[k] for u in updates]), axis=0) for k in updates[0]}


def test_training_rounds_use_the_strategys_reducer() -> None:
    coord = coordinator(Strategy(server_step=FedAvg(), participation=sync(),
                                 reducer=_UnweightedMean))
    online(coord, "pump-01", "pump-02")
    send(coord, "pump-01", 1, frame("pump-01", 1, shifted(+1.0), num_examples=10))
    send(coord, "pump-02", 1, frame("pump-02", 1, shifted(-3.0), num_examples=30))
    # Unweighted: (+1 - 3) / 2 = -1 (the example-weighted mean would give -2).
    assert coord.version == 1
    moved(coord, -1.0)


def test_server_step_state_from_an_old_checkpoint_is_used_and_written_back() -> None:
    # Velocity 1.0 everywhere, saved under the pre-split names "velocity/<tensor>".
    velocity = {f"velocity/{k}": np.ones(INITIAL_TENSORS[k].shape) for k in TRAINABLE}
    coord = coordinator(FedAvgM(server_lr=1.0, momentum=0.5), state=velocity)
    online(coord, "pump-01", "pump-02")
    send(coord, "pump-01", 1, frame("pump-01", 1, shifted(-2.0)))
    effects = coord.handle(TOPICS.update(1, "pump-02"), frame("pump-02", 1, shifted(-2.0)), T0)
    # grad = w - mean = +2; v = 0.5 * 1 + 2 = 2.5; w' = w - 2.5.
    moved(coord, -2.5)
    (save,) = [e for e in effects if isinstance(e, SaveCheckpoint)]
    assert set(save.checkpoint.strategy_state) == set(velocity)
    for key, value in save.checkpoint.strategy_state.items():
        np.testing.assert_allclose(value, np.full(value.shape, 2.5), rtol=1e-6, err_msg=key)


# Stats round through the stats reducer ----------------------------------------------------


def test_impossible_stats_are_rejected_and_the_round_goes_on() -> None:
    coord = coordinator(FedAvg(), stats_done=False)
    online(coord, "pump-01", "pump-02")
    fractional = frame("pump-01", 0, stats(2.5, [2, 4, 6], [2, 10, 20]), kind="stats",
                       num_examples=2)
    send(coord, "pump-01", 0, fractional)
    assert coord.rejected_total == {"malformed": 1}
    assert coord.open is not None and coord.open.received == set()  # no trace left
    send(coord, "pump-01", 0, frame("pump-01", 0, stats(2, [2, 4, 6], [2, 10, 20]),
                                    kind="stats", num_examples=2))
    effects = coord.handle(TOPICS.update(0, "pump-02"),
                           frame("pump-02", 0, stats(2, [6, 4, 6], [18, 8, 20]), kind="stats",
                                 num_examples=2), T0 + 2)
    s = summary(effects)
    assert (s.outcome, s.participants, s.rejected_by_reason) == ("completed", 2, {"malformed": 1})
    np.testing.assert_allclose(coord.tensors["input_mean"], [2.0, 2.0, 3.0])


def test_stats_round_of_zero_rows_fails() -> None:
    coord = coordinator(FedAvg(), stats_done=False)
    online(coord, "pump-01", "pump-02")
    for device in ("pump-01", "pump-02"):
        effects = coord.handle(TOPICS.update(0, device),
                               frame(device, 0, stats(0, [0, 0, 0], [0, 0, 0]), kind="stats",
                                     num_examples=1), T0 + 1)
    assert summary(effects).outcome == "failed"
    assert coord.stats_done is False
    assert announcement(effects).task == "stats"  # asked again


# Stale replies: the extension point a buffered asynchronous policy uses --------------------


class _BufferOfTwo(SyncParticipation):
    """Test policy: closes after two counted replies, takes replies one version stale at
    half weight. A stand-in for FedBuff to exercise the coordinator's stale path."""

    name = "test-buffer"
    max_staleness = 1

    def admit(self, view: RoundView, device: str, *, staleness: int, now: float) -> float:
        return super().admit(view, device, staleness=staleness, now=now) / (1 + staleness)

    def should_close(self, view: RoundView, now: float) -> bool:
        return view.counted >= 2 or now >= view.announcement.deadline

    def succeeded(self, view: RoundView) -> bool:
        return view.counted >= 1


def test_stale_replies_are_rebased_weighted_and_bounded() -> None:
    coord = coordinator(Strategy(server_step=FedAvg(), participation=_BufferOfTwo(
        min_clients=2, round_timeout_s=60.0)))
    online(coord, "pump-01", "pump-02", "pump-03")
    # Round 1 (base version 0): two replies fill the buffer; w1 = w0 + 2.
    send(coord, "pump-01", 1, frame("pump-01", 1, shifted(1.0), num_examples=10))
    send(coord, "pump-02", 1, frame("pump-02", 1, shifted(3.0), num_examples=10))
    assert coord.version == 1
    moved(coord, 2.0)
    # pump-03 answers round 1 late: trained on w0, it moved +6. Rebased onto w1 that is
    # w0 + 8, and it counts in round 2 at half its 20 examples: weight 10.
    send(coord, "pump-03", 1, frame("pump-03", 1, shifted(6.0), num_examples=20))
    assert coord.open is not None and coord.open.counted == 1
    send(coord, "pump-03", 1, frame("pump-03", 1, shifted(6.0), num_examples=20))  # again
    assert coord.rejected_total == {} and coord.duplicates_total == 1  # same bytes: one reply
    send(coord, "pump-03", 1, frame("pump-03", 1, shifted(7.0), num_examples=20))
    assert coord.rejected_total == {"replay": 1}
    # A fresh reply to round 2: trained on w1 and moved +2, i.e. w0 + 4, weight 10.
    effects = coord.handle(
        TOPICS.update(2, "pump-01"),
        frame("pump-01", 2, {k: v + np.float32(2.0) for k, v in coord.tensors.items()
                             if k in TRAINABLE}, base_version=1, num_examples=10),
        T0 + 3,
    )
    s = summary(effects)
    assert (s.round_id, s.outcome, s.participants, s.num_examples) == (2, "completed", 2, 30)
    # (10 * (w0 + 8) + 10 * (w0 + 4)) / 20 = w0 + 6.
    assert coord.version == 2
    moved(coord, 6.0)
    # Round 1 was trained on version 0, now two versions behind: beyond the bound.
    send(coord, "pump-02", 1, frame("pump-02", 1, shifted(1.0)))
    assert coord.rejected_total == {"replay": 1, "late": 1}


def test_sync_keeps_no_earlier_rounds_and_refuses_late_replies() -> None:
    coord = coordinator(FedAvg())
    online(coord, "pump-01", "pump-02")
    send(coord, "pump-01", 1, frame("pump-01", 1, shifted(1.0)))
    send(coord, "pump-02", 1, frame("pump-02", 1, shifted(1.0)))
    assert coord.version == 1
    send(coord, "pump-03", 1, frame("pump-03", 1, shifted(1.0)))
    assert coord.rejected_total == {"late": 1}
    assert coord._earlier == {}
