"""Sampled, over-selected sync rounds: who is picked, when the round closes, what is dropped."""

from __future__ import annotations

from collections import Counter

import pytest

from fedge.errors import ConfigError, RejectReason, UpdateRejectedError
from fedge.messages import RoundAnnouncement
from fedge.strategies import SyncParticipation, make_participation
from tests.unit.test_coordinator import (
    T0,
    TOPICS,
    _clean_env,  # noqa: F401 - the autouse fixture that clears FEDGE_* variables
    announcement,
    frame,
    make,
    online,
    shifted,
    summary,
)
from tests.unit.test_participation import View

ONLINE = frozenset(f"pump-{i:02d}" for i in range(10))


def sampled(**options: float) -> SyncParticipation:
    return SyncParticipation(
        min_clients=2, round_timeout_s=60.0, **{"fraction": 0.5, "over_select": 1.3, **options}
    )


def test_a_training_round_selects_fraction_times_over_select_of_the_online() -> None:
    plan = sampled().open_round(ONLINE, task="train", now=T0, round_id=4)
    assert plan is not None
    # k = max(2, ceil(0.5 * 10)) = 5 replies wanted; ceil(5 * 1.3) = 7 devices asked.
    assert plan.quorum == 5
    assert plan.selected is not None and len(plan.selected) == 7
    assert plan.selected <= ONLINE
    assert plan.expected == plan.selected
    assert plan.deadline == T0 + 60


def test_the_draw_depends_only_on_seed_round_and_online_set() -> None:
    policy = sampled()
    a = policy.open_round(ONLINE, task="train", now=T0, round_id=4)
    b = sampled().open_round(set(sorted(ONLINE, reverse=True)), task="train", now=T0 + 9,
                             round_id=4)
    assert a is not None and b is not None and a.selected == b.selected  # a restart draws alike
    draws = {policy.sample(ONLINE, 7, round_id=r) for r in range(1, 30)}
    assert len(draws) > 20  # rounds differ
    other_seed = sampled(seed=7).sample(ONLINE, 7, round_id=4)
    assert other_seed != a.selected or sampled(seed=8).sample(ONLINE, 7, round_id=4) != other_seed


def test_every_device_is_picked_about_as_often() -> None:
    policy = sampled()
    counts: Counter[str] = Counter()
    for round_id in range(1, 1001):
        counts.update(policy.sample(ONLINE, 7, round_id=round_id))
    # Each device is picked with probability 7/10: 700 of 1000 rounds, sd ~14.5.
    assert set(counts) == ONLINE
    assert all(620 <= n <= 780 for n in counts.values()), counts


def test_the_quorum_never_drops_below_min_clients_nor_exceeds_the_online() -> None:
    policy = SyncParticipation(min_clients=2, round_timeout_s=60.0, fraction=0.1,
                               over_select=1.5)
    plan = policy.open_round({"a", "b", "c"}, task="train", now=T0, round_id=1)
    # k = max(2, ceil(0.3)) = 2; ceil(2 * 1.5) = 3: all three are asked.
    assert plan is not None and plan.quorum == 2 and plan.selected == {"a", "b", "c"}
    assert policy.open_round({"a"}, task="train", now=T0, round_id=1) is None


@pytest.mark.parametrize("task", ["stats", "evaluate"])
def test_statistics_and_evaluation_rounds_ask_everyone(task: str) -> None:
    plan = sampled().open_round(ONLINE, task=task, now=T0, round_id=1)  # type: ignore[arg-type]
    assert plan is not None
    assert (plan.selected, plan.quorum, plan.expected) == (None, None, ONLINE)


def test_without_sampling_the_plan_is_the_classic_one() -> None:
    plan = SyncParticipation(min_clients=2, round_timeout_s=60.0).open_round(
        ONLINE, task="train", now=T0, round_id=3
    )
    assert plan is not None and (plan.selected, plan.quorum) == (None, None)


def _view(selected: list[str] | None, quorum: int) -> View:
    ann = RoundAnnouncement(
        fleet="f", round_id=1, task="train", base_version=0, issued_at=T0, deadline=T0 + 60,
        min_clients=quorum, selected=selected,
    )
    return View(expected=set(selected or ()), announcement=ann)


def test_a_sampled_round_closes_at_its_quorum() -> None:
    policy = sampled()
    view = _view(["a", "b", "c", "d"], quorum=3)
    assert not policy.should_close(view.reply("a", "b"), T0 + 1)
    assert policy.should_close(view.reply("c"), T0 + 2)
    assert policy.succeeded(view)


def test_a_reply_from_a_device_not_selected_is_refused() -> None:
    policy = sampled()
    view = _view(["a", "b"], quorum=2)
    assert policy.admit(view, "a", staleness=0, now=T0) == 1.0
    with pytest.raises(UpdateRejectedError) as info:
        policy.admit(view, "z", staleness=0, now=T0)
    assert info.value.reason is RejectReason.NOT_SELECTED


@pytest.mark.parametrize(
    "options",
    [{"fraction": 0.0}, {"fraction": 1.5}, {"over_select": 0.9}, {"seed": -1}, {"seed": 1.5}],
)
def test_impossible_sampling_options_are_config_errors(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="bad options for participation 'sync'"):
        make_participation("sync", options, min_clients=2, target_clients=None,
                           round_timeout_s=60.0)


# Through the coordinator ------------------------------------------------------------------


def test_coordinator_announces_the_selection_closes_at_quorum_and_counts_the_rest() -> None:
    devices = [f"pump-{i:02d}" for i in range(1, 7)]
    coord = make(min_clients=2, participation_options={"fraction": 0.5, "over_select": 1.5})
    ann = announcement(online(coord, *devices))
    # The round opened once 2 devices were online: k = max(2, ceil(1)) = 2, 3 asked of 2 = 2.
    assert ann.selected == ["pump-01", "pump-02"]
    ann = announcement(coord.tick(ann.deadline))  # it fails; the next one sees all six
    # Six online: k = max(2, 3) = 3 replies wanted, ceil(4.5) = 5 devices asked.
    assert ann.min_clients == 3
    assert ann.selected is not None and len(ann.selected) == 5
    assert ann.selected == sorted(ann.selected)
    (left_out,) = set(devices) - set(ann.selected)
    rid = ann.round_id

    def send(device: str) -> list[object]:
        return list(coord.handle(TOPICS.update(rid, device),
                                 frame(device, rid, shifted(1.0)), ann.deadline - 30))

    assert send(left_out) == []
    first, second, third, fourth = ann.selected[:4]
    send(first)
    send(second)
    s = summary(send(third))  # the quorum: closed without waiting for the other two
    assert (s.participants, s.outcome) == (3, "completed")
    assert s.rejected_by_reason == {"not_selected": 1}
    send(fourth)  # a straggler, after the close
    assert coord.rejected_total == {"not_selected": 1, "late": 1}
    assert coord.version == 1
