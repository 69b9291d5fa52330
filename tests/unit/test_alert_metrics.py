"""score_alerts and alert_intervals on literal, hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.life_watch import LifeWatch
from fedge.alert_metrics import ObservedLife, alert_intervals, persistent_alerts, score_alerts
from fedge.errors import DataError


def test_alert_intervals_from_flags() -> None:
    t = np.arange(8.0)
    flags = [0, 1, 1, 0, 0, 1, 1, 1]
    assert alert_intervals(t, flags) == [(1.0, 3.0), (5.0, None)]
    assert alert_intervals(t, np.zeros(8)) == []
    with pytest.raises(DataError):
        alert_intervals(t, [0, 1])


def test_one_failure_warned_in_time() -> None:
    # Life of cycles 0..199, failure at 199, monitoring from 30: healthy exposure
    # from 30 to 199 - 125 = 74, i.e. 44 cycles. Alert raised at 150: lead 49.
    life = ObservedLife(start=30, end=199, failure=199)
    score = score_alerts([life], [[(150.0, None)]])
    assert (score.failures, score.alerted, score.alerted_share) == (1, 1, 1.0)
    assert score.leads == (49.0,) and score.median_lead == 49.0
    assert score.false_alarms == 0 and score.healthy_exposure == 44.0
    assert score.false_alarms_per_1000 == 0.0


def test_late_warning_is_not_alerted_but_has_a_lead() -> None:
    score = score_alerts([ObservedLife(0, 199, 199)], [[(190.0, None)]])
    assert score.alerted == 0 and score.leads == (9.0,) and score.median_lead == 9.0


def test_early_alert_is_a_false_alarm_and_counts_from_the_zone_start_if_still_active() -> None:
    # Raised at 50 (RUL 149 > 125): a false alarm; still active at 74, the warning
    # zone's start, so the failure was warned 125 cycles ahead.
    score = score_alerts([ObservedLife(0, 199, 199)], [[(50.0, None)]])
    assert score.false_alarms == 1 and score.healthy_exposure == 74.0
    assert score.false_alarms_per_1000 == pytest.approx(1000 / 74)
    assert score.leads == (125.0,) and score.alerted == 1


def test_alert_cleared_before_the_zone_does_not_warn() -> None:
    score = score_alerts([ObservedLife(0, 199, 199)], [[(10.0, 40.0), (195.0, None)]])
    assert score.false_alarms == 1 and score.leads == (4.0,) and score.alerted == 0


def test_alert_after_failure_and_never_warned() -> None:
    score = score_alerts(
        [ObservedLife(0, 100, 100), ObservedLife(0, 300, 300)], [[], [(301.0, None)]]
    )
    assert score.leads == (None, None) and score.median_lead is None and score.alerted_share == 0.0


def test_censored_life_counts_false_alarms_only_far_from_its_end() -> None:
    # Repaired at 400: readings before 275 are certainly healthy (RUL > 400 - t > 125).
    life = ObservedLife(start=20, end=400)
    score = score_alerts([life], [[(100.0, 120.0), (300.0, None)]])
    assert score.failures == 0 and math.isnan(score.alerted_share)
    assert score.false_alarms == 1 and score.healthy_exposure == 255.0


def test_median_over_several_lives() -> None:
    lives = [ObservedLife(0, 199, 199), ObservedLife(0, 299, 299), ObservedLife(0, 149, 149)]
    alerts = [[(169.0, None)], [(199.0, 210.0)], [(145.0, None)]]
    score = score_alerts(lives, alerts)
    assert score.leads == (30.0, 100.0, 4.0)
    assert score.median_lead == 30.0 and score.alerted == 2
    assert score.alerted_share == pytest.approx(2 / 3)
    # Exposure 74 + 174 + 24; no alert was raised while healthy.
    assert score.healthy_exposure == 272.0 and score.false_alarms == 0


def test_bad_arguments() -> None:
    with pytest.raises(DataError):
        score_alerts([ObservedLife(0, 10, 10)], [])
    with pytest.raises(DataError):
        score_alerts([ObservedLife(0, 10, 10)], [[(5.0, 3.0)]])
    with pytest.raises(DataError):
        ObservedLife(0, 10, 5)
    with pytest.raises(DataError):
        score_alerts([], [], min_lead=200, healthy_margin=100)


def test_persistent_alerts_by_hand() -> None:
    t, f = True, False
    # k=2 of n=3: raised at the second trigger within 3 readings, cleared after 3 quiet ones.
    flags = [t, f, f, t, f, t, f, f, f, t]
    assert persistent_alerts(flags, k=2, n=3).tolist() == [f, f, f, f, f, t, t, t, f, f]
    assert persistent_alerts(flags, k=1, n=1).tolist() == flags


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5), st.integers(0, 4))
def test_persistent_alerts_match_the_agents_rul_alert(
    flags: list[bool], k: int, extra: int
) -> None:
    n = k + extra
    watch = LifeWatch(unit=0, first_seq=None, feature_names=("a",), health=None, rul_k=k, rul_n=n)
    online = [watch.predicted(low=flag, t=float(i)) for i, flag in enumerate(flags)]
    assert persistent_alerts(flags, k=k, n=n).tolist() == online
