"""FedBuff participation: staleness weights by hand, options, and rounds through the coordinator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aggregator.coordinator import Phase, RoundCoordinator, SaveCheckpoint
from fedge.codec import FrameHeader, encode_frame
from fedge.errors import ConfigError, RejectReason, UpdateRejectedError
from fedge.strategies import PARTICIPATION, FedBuffParticipation, make_participation
from fedge.strategies.participation import staleness_weight
from tests.unit.test_coordinator import (
    FLEET,
    INITIAL_TENSORS,
    T0,
    TOPICS,
    TRAINABLE,
    announcement,
    frame,
    make,
    online,
    shifted,
    stats,
    summary,
)


def test_staleness_weights_by_hand() -> None:
    assert staleness_weight(0) == 1.0
    assert staleness_weight(1) == pytest.approx(1 / math.sqrt(2))  # 0.7071
    assert staleness_weight(3) == 0.5  # 1 / sqrt(4)
    assert staleness_weight(8) == pytest.approx(1 / 3)  # 1 / sqrt(9)
    assert staleness_weight(3, exponent=1.0) == 0.25
    assert staleness_weight(5, exponent=0.0) == 1.0
    with pytest.raises(ValueError, match="staleness"):
        staleness_weight(-1)


def test_registered_with_its_options() -> None:
    assert PARTICIPATION["fedbuff"] is FedBuffParticipation
    policy = make_participation(
        "fedbuff", {"buffer_size": 3.0, "max_staleness": 2.0, "staleness_exponent": 1.0},
        min_clients=1, target_clients=None, round_timeout_s=60.0,
    )
    assert isinstance(policy, FedBuffParticipation)
    assert (policy.buffer_size, policy.max_staleness, policy.staleness_exponent) == (3, 2, 1.0)
    default = make_participation("fedbuff", min_clients=1, target_clients=None,
                                 round_timeout_s=60.0)
    assert (default.max_staleness, default.buffer_size) == (4, 4)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "options",
    [{"buffer_size": 0.0}, {"buffer_size": 2.5}, {"max_staleness": -1.0},
     {"staleness_exponent": -0.5}, {"staleness_exponent": math.inf}, {"k": 4.0}],
)
def test_bad_options_are_config_errors(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="bad options for participation 'fedbuff'"):
        make_participation("fedbuff", options, min_clients=1, target_clients=None,
                           round_timeout_s=60.0)


def _fedbuff(**options: float) -> RoundCoordinator:
    return make(rounds=10, participation="fedbuff",
                participation_options={"buffer_size": 2.0, "max_staleness": 2.0, **options})


def _send(coord: RoundCoordinator, device: str, round_id: int, base_version: int,
          delta: float, now: float) -> list[object]:
    payload = frame(device, round_id, shifted(delta), base_version=base_version, num_examples=10)
    return coord.handle(TOPICS.update(round_id, device), payload, now)  # type: ignore[return-value]


def test_a_buffer_closes_after_k_and_a_stale_reply_counts_down_weighted() -> None:
    coord = _fedbuff()
    first = announcement(online(coord, "pump-01", "pump-02", "pump-03"))
    assert coord.open is not None and coord.open.expected == {"pump-01", "pump-02"}
    # K = 2 fresh replies (+1 each): the buffer is applied, the next round announced at once.
    _send(coord, "pump-01", first.round_id, 0, 1.0, T0 + 1)
    effects = _send(coord, "pump-02", first.round_id, 0, 1.0, T0 + 2)
    assert summary(effects).participants == 2  # type: ignore[arg-type]
    assert coord.version == 1 and coord.phase is Phase.COLLECTING
    second = announcement(effects)  # type: ignore[arg-type]
    assert (second.round_id, second.base_version) == (first.round_id + 1, 1)
    (save,) = [e for e in effects if isinstance(e, SaveCheckpoint)]
    assert save.checkpoint.version == 1

    # pump-03 was slower: its reply to round 1 (base v0, +4) is one version stale. Rebased
    # onto v1 = w0 + 1 it is w0 + 5, with weight 10 / sqrt(2); pump-01's fresh reply to
    # round 2 is v1 + 2 = w0 + 3, weight 10. Mean: (3 + 5 / sqrt 2) / (1 + 1 / sqrt 2)
    # = 1 + 2 sqrt 2 = 3.828 above w0.
    assert _visible(_send(coord, "pump-03", first.round_id, 0, 4.0, T0 + 3)) == []
    assert coord.open is not None and coord.open.counted == 1
    effects = _send(coord, "pump-01", second.round_id, 1, 3.0, T0 + 4)
    s = summary(effects)  # type: ignore[arg-type]
    assert (s.outcome, s.participants, s.version) == ("completed", 2, 2)
    for name in TRAINABLE:
        expected = INITIAL_TENSORS[name] + 1 + 2 * math.sqrt(2)
        np.testing.assert_allclose(coord.tensors[name], expected, rtol=1e-5, atol=1e-5)


def test_replies_beyond_max_staleness_are_refused() -> None:
    coord = _fedbuff(buffer_size=1.0, max_staleness=1.0)
    first = announcement(online(coord, "pump-01", "pump-02"))
    _send(coord, "pump-01", first.round_id, 0, 1.0, T0 + 1)  # v1
    assert coord.open is not None
    _send(coord, "pump-01", coord.open.expect.round_id, 1, 1.0, T0 + 2)  # v2
    assert coord.version == 2
    # pump-02 still answers round 1 (base v0): two versions behind, the limit is one. The
    # coordinator no longer keeps round 1's base, so the reply answers no known round.
    assert _send(coord, "pump-02", first.round_id, 0, 1.0, T0 + 3) == []
    assert coord.rejected_total == {"late": 1}  # a reply to a round too old to rebase
    assert coord.open is not None and coord.open.counted == 0


def test_admit_refuses_beyond_the_limit_with_stale_base() -> None:
    policy = FedBuffParticipation(min_clients=1, round_timeout_s=60.0, max_staleness=2)
    coord = _fedbuff()
    announcement(online(coord, "pump-01", "pump-02"))
    assert coord.open is not None
    assert policy.admit(coord.open, "pump-01", staleness=2, now=T0) == pytest.approx(3 ** -0.5)
    with pytest.raises(UpdateRejectedError) as info:
        policy.admit(coord.open, "pump-01", staleness=3, now=T0)
    assert info.value.reason is RejectReason.STALE_BASE


def test_a_round_also_closes_when_every_device_replied_or_at_the_deadline() -> None:
    coord = _fedbuff(buffer_size=5.0)
    first = announcement(online(coord, "pump-01", "pump-02"))
    _send(coord, "pump-01", first.round_id, 0, 1.0, T0 + 1)
    effects = _send(coord, "pump-02", first.round_id, 0, 1.0, T0 + 2)  # 2 < K, all replied
    assert summary(effects).participants == 2  # type: ignore[arg-type]
    assert coord.open is not None
    _send(coord, "pump-01", coord.open.expect.round_id, 1, 1.0, T0 + 3)  # 1 of 2
    assert coord.tick(coord.open.announcement.deadline - 0.01) == []
    late = coord.tick(coord.open.announcement.deadline)
    s = summary(late)  # type: ignore[arg-type]
    assert (s.outcome, s.participants, s.version) == ("completed", 1, 2)  # a partial buffer


def test_stats_rounds_keep_the_sync_rules() -> None:
    coord = make(stats_done=False, round_id=-1, participation="fedbuff",
                 participation_options={"buffer_size": 1.0})
    ann = announcement(online(coord, "pump-01", "pump-02"))
    assert ann.task == "stats"
    a = frame("pump-01", 0, stats(2, [2, 4, 6], [2, 10, 20]), kind="stats", num_examples=2)
    # K = 1 does not apply (the reply is only journaled)
    assert _visible(coord.handle(TOPICS.update(0, "pump-01"), a, T0 + 1)) == []
    assert coord.open is not None and coord.open.expect.task == "stats"


def _visible(effects: list[object]) -> list[object]:
    """Effects other than the journal's (every accepted reply is journaled first)."""
    return [e for e in effects if type(e).__name__ != "JournalUpdate"]


def test_a_decline_of_a_round_that_closed_meanwhile_is_late_not_wrong() -> None:
    coord = _fedbuff()
    first = announcement(online(coord, "pump-01", "pump-02", "pump-03"))
    _send(coord, "pump-01", first.round_id, 0, 1.0, T0 + 1)
    _send(coord, "pump-02", first.round_id, 0, 1.0, T0 + 2)  # K = 2: round 1 closed
    assert coord.open is not None and coord.open.expect.round_id == first.round_id + 1
    # pump-03 refused round 1's base model and says so, after round 1 closed.
    header = FrameHeader(kind="decline", fleet=FLEET, device="pump-03",
                         round_id=first.round_id, base_version=0, created_at=T0,
                         reason="model_refused")
    assert coord.handle(TOPICS.update(first.round_id, "pump-03"), encode_frame(header, {}),
                        T0 + 3) == []
    assert coord.rejected_total == {"late": 1}
    assert coord.open.rejected == {"late": 1} and coord.open.declined == set()


def test_a_stale_training_reply_during_the_final_evaluation_is_late() -> None:
    coord = make(rounds=1, participation="fedbuff", final_evaluation=True,
                 participation_options={"buffer_size": 2.0, "max_staleness": 2.0})
    first = announcement(online(coord, "pump-01", "pump-02", "pump-03"))
    _send(coord, "pump-01", first.round_id, 0, 1.0, T0 + 1)
    _send(coord, "pump-02", first.round_id, 0, 1.0, T0 + 2)  # the only training round
    assert coord.open is not None and coord.open.expect.task == "evaluate"
    # pump-03's training reply to round 1 has no training round to count in any more.
    assert _send(coord, "pump-03", first.round_id, 0, 4.0, T0 + 3) == []
    assert coord.rejected_total == {"late": 1}
    assert coord.open.counted == 0
