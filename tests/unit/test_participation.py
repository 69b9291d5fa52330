"""The sync participation policy's decisions on literal scenarios, and the policy registry."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from fedge.errors import ConfigError, RejectReason, UpdateRejectedError
from fedge.messages import RoundAnnouncement
from fedge.strategies import (
    PARTICIPATION,
    RoundPlan,
    RoundView,
    SyncParticipation,
    make_participation,
)

T0 = 1_700_000_000.0


@dataclass
class View:
    """A literal round for the policy to look at (the coordinator's _OpenRound in miniature)."""

    expected: set[str]
    received: set[str] = field(default_factory=set)
    counted: int = 0
    announcement: RoundAnnouncement = field(
        default_factory=lambda: RoundAnnouncement(
            fleet="f", round_id=1, task="train", base_version=0, issued_at=T0,
            deadline=T0 + 60, min_clients=2,
        )
    )

    def reply(self, *devices: str) -> View:
        self.received.update(devices)
        self.counted += len(devices)
        return self


def sync(*, min_clients: int = 2, target_clients: int | None = None) -> SyncParticipation:
    return SyncParticipation(
        min_clients=min_clients, target_clients=target_clients, round_timeout_s=60.0
    )


def test_view_fits_the_protocol() -> None:
    view: RoundView = View(expected={"a"})
    assert view.counted == 0


def test_opens_once_the_quorum_is_online_and_expects_exactly_those() -> None:
    policy = sync()
    assert policy.open_round({"a"}, task="train", now=T0) is None
    plan = policy.open_round({"a", "b"}, task="train", now=T0)
    assert plan == RoundPlan(expected=frozenset({"a", "b"}), deadline=T0 + 60)
    assert policy.open_round({"a", "b", "c"}, task="stats", now=T0 + 5) == RoundPlan(
        expected=frozenset({"a", "b", "c"}), deadline=T0 + 65
    )


def test_closes_when_all_expected_replied_and_succeeds() -> None:
    policy = sync()
    view = View(expected={"a", "b", "c"}).reply("a", "b")
    assert not policy.should_close(view, T0 + 10)  # still waiting for c
    view.reply("c")
    assert policy.should_close(view, T0 + 11)
    assert policy.succeeded(view)


def test_a_reply_from_an_unexpected_device_counts_but_does_not_replace_one() -> None:
    policy = sync()
    view = View(expected={"a", "b"}).reply("a", "late-joiner")
    assert not policy.should_close(view, T0 + 10)
    assert policy.succeeded(view)  # two counted replies meet min_clients = 2


def test_closes_when_the_target_is_reached() -> None:
    policy = sync(target_clients=2)
    view = View(expected={"a", "b", "c", "d"}).reply("a")
    assert not policy.should_close(view, T0 + 1)
    view.reply("b")
    assert policy.should_close(view, T0 + 2)
    assert policy.succeeded(view)


def test_deadline_with_quorum_succeeds() -> None:
    policy = sync()
    view = View(expected={"a", "b", "c"}).reply("a", "b")
    assert not policy.should_close(view, T0 + 59.9)
    assert policy.should_close(view, T0 + 60)
    assert policy.succeeded(view)


def test_deadline_without_quorum_fails() -> None:
    policy = sync()
    view = View(expected={"a", "b"}).reply("a")
    assert policy.should_close(view, T0 + 60)
    assert not policy.succeeded(view)
    assert not policy.succeeded(View(expected={"a", "b"}))


def test_device_going_offline_is_no_longer_waited_for() -> None:
    policy = sync()
    view = View(expected={"a", "b", "c"}).reply("a", "b")
    assert not policy.should_close(view, T0 + 5)
    view.expected.discard("c")  # what the coordinator does when c's status turns offline
    assert policy.should_close(view, T0 + 5)
    assert policy.succeeded(view)


def test_everyone_going_offline_waits_for_the_deadline() -> None:
    # No device left to wait for is not "everyone replied": the round runs to its deadline.
    policy = sync()
    view = View(expected=set())
    assert not policy.should_close(view, T0 + 30)
    assert policy.should_close(view, T0 + 60)
    assert not policy.succeeded(view)


def test_sync_counts_only_fresh_replies_at_full_weight() -> None:
    policy = sync()
    view = View(expected={"a", "b"})
    assert policy.max_staleness == 0
    assert policy.admit(view, "a", staleness=0, now=T0) == 1.0
    with pytest.raises(UpdateRejectedError) as info:
        policy.admit(view, "a", staleness=1, now=T0)
    assert info.value.reason is RejectReason.STALE_BASE


def test_default_rebase_applies_the_clients_change_to_the_current_model() -> None:
    update = {"w": np.array([3.0, 0.0], np.float32)}  # trained from base [1, 1]
    rebased = sync().rebase(
        update, base={"w": np.array([1.0, 1.0], np.float32)},
        current={"w": np.array([10.0, -10.0], np.float32)},
    )
    # current + (update - base) = [10 + 2, -10 - 1]
    np.testing.assert_array_equal(rebased["w"], np.array([12.0, -11.0], np.float32))
    assert rebased["w"].dtype == np.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_clients": 0, "round_timeout_s": 1.0},
        {"min_clients": 1, "target_clients": 0, "round_timeout_s": 1.0},
        {"min_clients": 1, "round_timeout_s": 0.0},
    ],
)
def test_sync_refuses_impossible_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SyncParticipation(**kwargs)  # type: ignore[arg-type]


def test_make_participation() -> None:
    policy = make_participation("sync", min_clients=3, target_clients=5, round_timeout_s=9.0)
    assert isinstance(policy, SyncParticipation)
    assert (policy.min_clients, policy.target_clients, policy.round_timeout_s) == (3, 5, 9.0)
    assert PARTICIPATION["sync"] is SyncParticipation
    with pytest.raises(ConfigError, match="bad options for participation 'sync'"):
        make_participation("sync", {"k": 4}, min_clients=1, target_clients=None,
                           round_timeout_s=1.0)
    with pytest.raises(ConfigError, match="bad options for participation 'sync'"):
        make_participation("sync", min_clients=0, target_clients=None, round_timeout_s=1.0)


@pytest.mark.parametrize("name", ["Sync", "FedBuff", ""])
def test_make_participation_unknown_name_lists_the_choices(name: str) -> None:
    with pytest.raises(
        ConfigError,
        match=rf"unknown participation policy {name!r}; choose one of \['fedbuff', 'sync'\]",
    ):
        make_participation(name, min_clients=1, target_clients=None, round_timeout_s=1.0)
