"""The demo's maintenance figures from scored lives, computed by hand."""

from __future__ import annotations

from edge_agent.life_watch import LifeOutcome
from fedge_app.demo import failure_figures


def _life(kind: str, lead: float | None, alerted: bool, false_alarms: int) -> LifeOutcome:
    return LifeOutcome(
        device="d",
        unit=0,
        end_kind=kind,  # type: ignore[arg-type]
        end_ts=1_700_000_000.0,
        length=200.0,
        lead=lead,
        alerted=alerted,
        first_alert_kind=None if lead is None else "anomaly",
        false_alarms=false_alarms,
        alerts=false_alarms + (lead is not None),
    )


def test_failure_figures_by_hand() -> None:
    lives = [
        _life("failure", 30.0, True, 1),
        _life("failure", None, False, 0),  # never warned: no lead
        _life("failure", 10.0, False, 0),  # warned, but less than 20 cycles ahead
        _life("repair", None, False, 2),  # censored: no failure, its false alarms count
    ]
    assert failure_figures(lives) == {
        "failures": 3,
        "failures_alerted": 1,
        "median_lead": 20.0,  # median of 30 and 10
        "false_alarms": 3,
    }
    assert failure_figures([]) == {
        "failures": 0,
        "failures_alerted": 0,
        "median_lead": None,
        "false_alarms": 0,
    }
