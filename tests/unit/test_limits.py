"""The agent's own limits on round announcements and global models (issue 11.3)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from fedge.errors import RefusalReason, RefusedError
from fedge.limits import (
    DEFAULT_LIMITS,
    Adjustment,
    AgentLimits,
    check_announcement,
    check_global_model,
    check_stats_rows,
)
from fedge.messages import RoundAnnouncement, TrainingConfig
from fedge.spec import ModelSpec

NOW = 1_700_000_000.0
SPEC = ModelSpec(n_features=3)  # stats_features = 3 with the default "window" context


def _ann(**overrides: object) -> RoundAnnouncement:
    fields: dict[str, object] = {
        "fleet": "plant-7",
        "round_id": 4,
        "base_version": 3,
        "issued_at": NOW - 5.0,
        "deadline": NOW + 120.0,
        "min_clients": 2,
    }
    fields.update(overrides)
    return RoundAnnouncement.model_validate(fields)


def _refusal(call: object) -> RefusalReason:
    assert callable(call)
    with pytest.raises(RefusedError) as exc:
        call()
    return exc.value.reason


# -- announcements -------------------------------------------------------------------


def test_sane_announcement_passes_unchanged_but_for_the_examples_cap() -> None:
    admitted = check_announcement(_ann(), now=NOW)
    assert admitted.adjustments == ()
    assert admitted.announcement.training.max_examples == 1_000_000
    assert admitted.announcement.model_dump(exclude={"training"}) == _ann().model_dump(
        exclude={"training"}
    )
    assert admitted.train_budget_s == 120.0  # deadline 120 s away, under max_train_seconds 600


def test_forged_100_epochs_batch_1_is_clamped() -> None:
    forged = _ann(training=TrainingConfig(epochs=100, batch_size=1, learning_rate=10.0))
    admitted = check_announcement(forged, now=NOW)
    training = admitted.announcement.training
    assert (training.epochs, training.batch_size, training.learning_rate) == (20, 8, 1.0)
    assert admitted.adjustments == (
        Adjustment("training.epochs", 100, 20),
        Adjustment("training.batch_size", 1, 8),
        Adjustment("training.learning_rate", 10.0, 1.0),
    )


def test_large_requests_are_clamped_to_the_agents_caps() -> None:
    ann = _ann(
        deadline=NOW + 86_400.0,
        max_update_bytes=1 << 30,
        training=TrainingConfig(batch_size=4096, max_examples=10**9),
    )
    admitted = check_announcement(ann, now=NOW)
    assert admitted.announcement.deadline == NOW + 3_600.0
    assert admitted.announcement.max_update_bytes == 16 << 20
    assert admitted.announcement.training.batch_size == 1024
    assert admitted.announcement.training.max_examples == 1_000_000
    assert admitted.train_budget_s == 600.0  # max_train_seconds < 3600 s to the deadline
    assert [a.field for a in admitted.adjustments] == [
        "training.batch_size",
        "training.max_examples",
        "max_update_bytes",
        "deadline",
    ]


def test_refused_announcements() -> None:
    strict = AgentLimits(allowed_tasks=frozenset({"train"}))
    cases = [
        (_ann(task="stats"), strict, RefusalReason.TASK_NOT_ALLOWED),
        (
            _ann(issued_at=NOW + 61.0, deadline=NOW + 200.0),
            DEFAULT_LIMITS,
            RefusalReason.ISSUED_IN_FUTURE,
        ),
        (_ann(issued_at=NOW - 5.0, deadline=NOW - 6.0), DEFAULT_LIMITS, RefusalReason.BAD_DEADLINE),
        (_ann(deadline=NOW), DEFAULT_LIMITS, RefusalReason.EXPIRED),
        (
            _ann(task="stats", training=TrainingConfig(max_examples=31)),
            DEFAULT_LIMITS,
            RefusalReason.TOO_FEW_EXAMPLES,
        ),
    ]
    for ann, limits, reason in cases:
        assert _refusal(lambda a=ann, lim=limits: check_announcement(a, lim, now=NOW)) is reason
    # 60 s of skew is tolerated; 32 rows is enough for a stats round.
    check_announcement(_ann(issued_at=NOW + 60.0, deadline=NOW + 200.0), now=NOW)
    check_announcement(_ann(task="stats", training=TrainingConfig(max_examples=32)), now=NOW)


def test_stats_rows_floor() -> None:
    check_stats_rows(32)
    assert _refusal(lambda: check_stats_rows(31)) is RefusalReason.TOO_FEW_EXAMPLES


def test_limits_are_validated() -> None:
    with pytest.raises(ValidationError):
        AgentLimits(min_batch_size=64, max_batch_size=32)
    with pytest.raises(ValidationError):
        AgentLimits(min_std=1.0, max_std=1.0)
    with pytest.raises(ValidationError):
        AgentLimits(max_epochs=0)


# -- global models -------------------------------------------------------------------


def _model(**overrides: np.ndarray) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {
        "input_mean": np.array([10.0, -3.0, 0.5], dtype=np.float32),
        "input_std": np.array([2.0, 0.1, 1.0], dtype=np.float32),
        "head.weight": np.array([[0.3, -0.2, 1.5]], dtype=np.float32),
        "head.bias": np.array([62.5], dtype=np.float32),
        "steps": np.array(7, dtype=np.int64),
    }
    tensors.update(overrides)
    return tensors


def _check(tensors: dict[str, np.ndarray], **kw: object) -> None:
    options: dict[str, object] = {"version": 5, "previous_version": 4, "authenticated": False}
    options.update(kw)
    check_global_model(tensors, SPEC, **options)  # type: ignore[arg-type]


def test_sane_model_passes() -> None:
    _check(_model())
    _check(_model(), previous_version=None, version=9999)  # nothing running: any version


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"input_std": np.array([2.0, 1e-38, 1.0], np.float32)}, RefusalReason.STD_OUT_OF_RANGE),
        ({"input_std": np.array([2.0, 0.0, 1.0], np.float32)}, RefusalReason.STD_OUT_OF_RANGE),
        ({"input_std": np.array([2.0, -1.0, 1.0], np.float32)}, RefusalReason.STD_OUT_OF_RANGE),
        ({"input_std": np.array([2.0, 2e6, 1.0], np.float32)}, RefusalReason.STD_OUT_OF_RANGE),
        ({"input_std": np.array([2.0, np.nan, 1.0], np.float32)}, RefusalReason.NON_FINITE),
        ({"input_mean": np.array([0.0, 2e9, 0.0], np.float32)}, RefusalReason.MEAN_OUT_OF_RANGE),
        ({"input_mean": np.array([0.0, -np.inf, 0.0])}, RefusalReason.NON_FINITE),
        ({"input_mean": np.zeros(4, np.float32)}, RefusalReason.BAD_NORMALISATION),
        ({"input_std": np.ones((3, 1), np.float32)}, RefusalReason.BAD_NORMALISATION),
        ({"head.weight": np.array([[0.3, np.nan, 1.5]], np.float32)}, RefusalReason.NON_FINITE),
        ({"head.weight": np.array([[0.3, -1e5, 1.5]])}, RefusalReason.WEIGHT_OUT_OF_RANGE),
        ({"flags": np.array([True])}, RefusalReason.NON_FINITE),
    ],
    ids=[
        "std-1e-38",
        "std-zero",
        "std-negative",
        "std-huge",
        "std-nan",
        "mean-huge",
        "mean-inf",
        "mean-shape",
        "std-shape",
        "weight-nan",
        "weight-huge",
        "bool",
    ],
)
def test_unsafe_tensors_are_refused(
    overrides: dict[str, np.ndarray], reason: RefusalReason
) -> None:
    assert _refusal(lambda: _check(_model(**overrides))) is reason


def test_integer_counters_are_not_weights() -> None:
    _check(_model(steps=np.array(10**6, np.int64)))


def test_missing_normalisation() -> None:
    tensors = _model()
    del tensors["input_std"]
    assert _refusal(lambda: _check(tensors)) is RefusalReason.MISSING_NORMALISATION


def test_std_floor_and_ceiling_are_inclusive() -> None:
    _check(_model(input_std=np.array([1e-6, 1e6, 1.0], np.float64)))
    _check(_model(input_mean=np.array([1e9, -1e9, 0.0])))


def test_versions() -> None:
    model = _model()
    assert _refusal(lambda: _check(model, version=3)) is RefusalReason.VERSION_ROLLBACK
    assert _refusal(lambda: _check(model, version=4)) is RefusalReason.VERSION_REPEAT
    # Unsigned: at most 1000 ahead; 9999 from 4 is 9995 ahead.
    assert _refusal(lambda: _check(model, version=9999)) is RefusalReason.VERSION_JUMP
    _check(model, version=1004)
    assert _refusal(lambda: _check(model, version=1005)) is RefusalReason.VERSION_JUMP
    # Signed by the aggregator: an agent that was away for long must catch up.
    _check(model, version=9999, authenticated=True)
    # Still never backwards, signed or not (an old signed model replayed).
    assert (
        _refusal(lambda: _check(model, version=3, authenticated=True))
        is RefusalReason.VERSION_ROLLBACK
    )


def test_version_is_checked_before_the_tensors() -> None:
    bad = _model(input_std=np.array([1e-38, 1.0, 1.0], np.float32))
    assert _refusal(lambda: _check(bad, version=2)) is RefusalReason.VERSION_ROLLBACK
