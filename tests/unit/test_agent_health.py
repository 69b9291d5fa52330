"""The agent's health score on a synthetic stream with a known change point.

Three Gaussian channels; from reading 150 on two of them move by 6 standard
deviations. The agent must publish predictions whose ``anomaly`` is off before the
change and on a few readings after it, naming the two channels; the ingest rules
must turn those predictions into ``alert`` points of kind ``anomaly``; and when the
failure is recorded, the life's alerts are scored: one alert, 43 cycles ahead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.life_watch import LifeOutcome
from fedge.codec import FrameHeader, encode_frame
from fedge.ingest_rules import Accepted, IngestRules
from fedge.messages import Prediction, decode_message
from fedge.models import build_model, state_tensors
from fedge.spec import ModelSpec
from fedge.transport import InMemoryBroker
from tests.unit.test_agent import Recorder, publisher
from tests.unit.test_maintenance import (
    DEVICE,
    FLEET,
    NAMES,
    T0,
    TOPICS,
    Clock,
    Machine,
    cli_write,
    event,
    make_agent,
    sample_at,
)

CHANGE = 150
SPEC = ModelSpec(n_features=len(NAMES), window=4)


def _model_frame() -> bytes:
    header = FrameHeader(
        kind="global", fleet=FLEET, round_id=1, base_version=1, version=1, model=SPEC
    )
    return encode_frame(header, state_tensors(build_model(SPEC, seed=0)))


def test_anomaly_alert_after_the_change_point_names_the_moved_channels(tmp_path: Path) -> None:
    clock = Clock()
    broker = InMemoryBroker()
    rec = Recorder(broker, TOPICS.all_predictions)
    source = Machine(seed=7, shift_from=CHANGE, shift=(0.0, 6.0, -6.0))
    # alert_rul=0: the RUL model never alerts here, only the health score can.
    agent = make_agent(tmp_path, clock, broker=broker, source=source, alert_rul=0.0)
    outcomes: list[LifeOutcome] = []
    agent.maintenance.on_outcome = outcomes.append
    agent.start()
    publisher(broker).publish(TOPICS.global_model, _model_frame(), retain=True)
    agent.step()
    assert agent.model_version == 1
    for i in range(200):
        sample_at(agent, clock, T0 + i)
        agent.predict_and_publish()
    preds = [decode_message(Prediction, m.payload) for m in rec.on(TOPICS.prediction(DEVICE))]
    by_cycle = {p.cycle: p for p in preds}  # the last prediction of each cycle
    assert all(by_cycle[c].health is None for c in range(29))  # learning the baseline
    assert all(not by_cycle[c].anomaly for c in range(CHANGE))
    healthy = [by_cycle[c].health for c in range(40, CHANGE)]
    assert all(h is not None and h > 0.5 for h in healthy)
    raised = min(c for c in range(200) if by_cycle[c].anomaly)
    assert CHANGE < raised <= CHANGE + 10
    assert all(by_cycle[c].anomaly for c in range(raised, 200))
    reason = by_cycle[raised].anomaly_reason
    assert reason is not None
    # The two channels that moved come first (largest |z|), with the sign of the move.
    first_two = sorted(
        part.split(" z=")[0] + part.split(" z=")[1][0] for part in reason.split(", ")[:2]
    )
    assert first_two == ["b+", "c-"]
    assert not any(p.alert for p in preds)
    # Ingested, each anomalous prediction also becomes an alert point of kind "anomaly".
    rules = IngestRules(fleet=FLEET)
    outcome = rules.convert(
        TOPICS.prediction(DEVICE),
        rec.on(TOPICS.prediction(DEVICE))[-1].payload,
        received_at=T0 + 300,
    )
    assert isinstance(outcome, Accepted)
    (alert,) = [p for p in outcome.points if p.measurement == "alert"]
    assert alert.tag_dict["kind"] == "anomaly"
    assert str(alert.field_dict["message"]).startswith(f"{DEVICE}: anomaly: ")
    # The failure is recorded (at the last reading): the life's alerts are scored.
    cli_write(agent.config.store_path, event("failure", T0 + 199))
    clock.now = T0 + 199.5
    agent.step()
    (scored,) = outcomes
    assert (scored.unit, scored.end_kind, scored.alerts, scored.false_alarms) == (
        0,
        "failure",
        1,
        0,
    )
    assert scored.lead == 199 - raised and scored.alerted
    assert scored.first_alert_kind == "anomaly"
    # The next life starts a new baseline.
    sample_at(agent, clock, T0 + 200)
    assert agent.maintenance.watch.monitor is not None
    assert agent.maintenance.watch.monitor.phase == "baseline"
    agent.stop()


def test_rul_alerts_follow_the_persistence_rule(tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(tmp_path, clock, rul_alert_k=2, rul_alert_n=3)
    agent.start()
    sample_at(agent, clock, T0)
    flags = [agent.maintenance.predicted(low=low, cycle=0) for low in (True, False, True, True)]
    # 1 of 3 low: no; 1 of 3: no; 2 of 3: alert; then it holds until none of 3 is low.
    assert flags == [False, False, True, True]
    assert [agent.maintenance.predicted(low=False, cycle=0) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    np.testing.assert_array_equal(len(agent.maintenance.watch.intervals), 1)
    agent.stop()


def test_a_life_younger_than_the_models_window_raises_no_rul_alert(tmp_path: Path) -> None:
    clock = Clock()
    broker = InMemoryBroker()
    agent = make_agent(tmp_path, clock, broker=broker, alert_rul=1e9)  # every RUL is "low"
    agent.start()
    publisher(broker).publish(TOPICS.global_model, _model_frame(), retain=True)
    agent.step()
    alerts = []
    for i in range(SPEC.window + 2):
        sample_at(agent, clock, T0 + i)
        pred = agent.predict_and_publish()
        assert pred is not None and pred.cycle == i
        alerts.append(pred.alert)
    # Trained on full windows only: the model may page from the window's last cycle on.
    assert alerts == [False] * (SPEC.window - 1) + [True] * 3
    agent.stop()
