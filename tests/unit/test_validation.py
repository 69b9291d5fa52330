"""UpdateValidator.check: one test per reject reason, with literal tiny templates."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.codec import Frame, FrameHeader, decode_frame, encode_frame
from fedge.errors import RejectReason, UpdateRejectedError
from fedge.topics import ParsedTopic, TopicKind, parse_topic
from fedge.validation import TASK_FRAME_KIND, RoundExpectation, UpdateValidator

FLEET = "plant-7"
TEMPLATE = {
    "w": np.array([[0.0, 0.0], [0.0, 0.0]], np.float32),
    "b": np.array([1.0], np.float32),
}
EXPECT = RoundExpectation(round_id=12, base_version=3, task="train", template=TEMPLATE)
TOPIC = ParsedTopic(TopicKind.UPDATE, FLEET, "pump-03", 12)


def _tensors(**changes: np.ndarray | None) -> dict[str, np.ndarray]:
    tensors = {
        "w": np.array([[0.5, -0.5], [0.25, 0.0]], np.float32),
        "b": np.array([1.5], np.float32),
    }
    for name, value in changes.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    return tensors


def _frame(tensors: dict[str, np.ndarray] | None = None, **header: object) -> Frame:
    fields: dict[str, object] = {
        "kind": "update",
        "fleet": FLEET,
        "device": "pump-03",
        "round_id": 12,
        "base_version": 3,
        "num_examples": 40,
        "created_at": 1_700_000_000.0,
    }
    fields.update(header)
    return Frame(FrameHeader.model_validate(fields), _tensors() if tensors is None else tensors)


def _reason(validator: UpdateValidator, frame: Frame, *, topic: ParsedTopic = TOPIC,
            expect: RoundExpectation = EXPECT, received: frozenset[str] = frozenset()
            ) -> RejectReason:
    with pytest.raises(UpdateRejectedError) as info:
        validator.check(topic, frame, expect, already_received=received)
    assert str(info.value).startswith(f"{info.value.reason.value}: ")
    assert info.value.detail
    return info.value.reason


V = UpdateValidator(fleet=FLEET)


def test_accepts_a_good_update() -> None:
    assert V.check(TOPIC, _frame(), EXPECT) == "pump-03"


def test_accepts_a_good_update_through_the_codec() -> None:
    # The same check on a frame that went through bytes, with the topic parsed from a string.
    header = _frame().header
    frame = decode_frame(encode_frame(header, _tensors()))
    topic = parse_topic("fedge/v1/plant-7/rounds/12/updates/pump-03")
    validator = UpdateValidator(fleet=FLEET, allowed_devices=frozenset({"pump-03", "pump-04"}))
    assert validator.check(topic, frame, EXPECT, already_received={"pump-04"}) == "pump-03"


@pytest.mark.parametrize(
    ("task", "kind"), [("train", "update"), ("evaluate", "evaluation"), ("stats", "stats")]
)
def test_accepts_the_frame_kind_of_each_task(task: str, kind: str) -> None:
    assert TASK_FRAME_KIND[task] == kind  # type: ignore[index]
    expect = RoundExpectation(12, 3, task, TEMPLATE)  # type: ignore[arg-type]
    assert V.check(TOPIC, _frame(kind=kind), expect) == "pump-03"


def test_wrong_fleet_in_header() -> None:
    assert _reason(V, _frame(fleet="plant-8")) is RejectReason.WRONG_FLEET


def test_wrong_fleet_in_topic() -> None:
    topic = ParsedTopic(TopicKind.UPDATE, "plant-8", "pump-03", 12)
    assert _reason(V, _frame(), topic=topic) is RejectReason.WRONG_FLEET


def test_topic_mismatch_device() -> None:
    # pump-04 publishing a frame that claims to come from pump-03 (or the reverse).
    assert _reason(V, _frame(device="pump-04")) is RejectReason.TOPIC_MISMATCH


def test_topic_mismatch_device_missing_in_header() -> None:
    assert _reason(V, _frame(device=None)) is RejectReason.TOPIC_MISMATCH


def test_topic_mismatch_round() -> None:
    assert _reason(V, _frame(round_id=11)) is RejectReason.TOPIC_MISMATCH


@pytest.mark.parametrize(
    "topic",
    [
        ParsedTopic(TopicKind.STATUS, FLEET, "pump-03"),
        ParsedTopic(TopicKind.GLOBAL_MODEL, FLEET),
        ParsedTopic(TopicKind.UPDATE, FLEET, None, 12),
        ParsedTopic(TopicKind.UPDATE, FLEET, "pump-03", None),
    ],
)
def test_topic_mismatch_not_an_update_topic(topic: ParsedTopic) -> None:
    assert _reason(V, _frame(), topic=topic) is RejectReason.TOPIC_MISMATCH


def test_unknown_device() -> None:
    validator = UpdateValidator(fleet=FLEET, allowed_devices=frozenset({"pump-01", "pump-02"}))
    assert _reason(validator, _frame()) is RejectReason.UNKNOWN_DEVICE


def test_wrong_round() -> None:
    topic = ParsedTopic(TopicKind.UPDATE, FLEET, "pump-03", 11)
    assert _reason(V, _frame(round_id=11), topic=topic) is RejectReason.WRONG_ROUND


@pytest.mark.parametrize(
    ("task", "kind"),
    [("train", "evaluation"), ("train", "global"), ("train", "stats"), ("evaluate", "update"),
     ("stats", "update")],
)
def test_wrong_kind_for_task(task: str, kind: str) -> None:
    expect = RoundExpectation(12, 3, task, TEMPLATE)  # type: ignore[arg-type]
    assert _reason(V, _frame(kind=kind), expect=expect) is RejectReason.MALFORMED


@pytest.mark.parametrize("base", [2, 4, 0])
def test_stale_base(base: int) -> None:
    assert _reason(V, _frame(base_version=base)) is RejectReason.STALE_BASE


def test_replay() -> None:
    received = frozenset({"pump-03"})
    assert _reason(V, _frame(), received=received) is RejectReason.REPLAY


def test_bad_examples_zero() -> None:
    assert _reason(V, _frame(num_examples=0)) is RejectReason.BAD_EXAMPLES


def test_bad_examples_over_limit() -> None:
    validator = UpdateValidator(fleet=FLEET, max_examples=1000)
    assert validator.check(TOPIC, _frame(num_examples=1000), EXPECT) == "pump-03"
    assert _reason(validator, _frame(num_examples=1001)) is RejectReason.BAD_EXAMPLES


def test_missing_tensor() -> None:
    with pytest.raises(UpdateRejectedError) as info:
        V.check(TOPIC, _frame(_tensors(b=None)), EXPECT)
    assert info.value.reason is RejectReason.MISSING_TENSOR
    assert info.value.detail == "b"


def test_unexpected_tensor() -> None:
    with pytest.raises(UpdateRejectedError) as info:
        V.check(TOPIC, _frame(_tensors(extra=np.zeros(1, np.float32))), EXPECT)
    assert info.value.reason is RejectReason.UNEXPECTED_TENSOR
    assert info.value.detail == "extra"


@pytest.mark.parametrize(
    "shape", [(2,), (4,), (2, 2, 1), (1, 2), ()], ids=str
)
def test_shape_mismatch(shape: tuple[int, ...]) -> None:
    tensors = _tensors(w=np.zeros(shape, np.float32))
    assert _reason(V, _frame(tensors)) is RejectReason.SHAPE_MISMATCH


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.uint8])
def test_dtype_mismatch(dtype: type) -> None:
    tensors = _tensors(b=np.array([1], dtype))
    assert _reason(V, _frame(tensors)) is RejectReason.DTYPE_MISMATCH


def test_norm_too_large() -> None:
    # Distance from the template: w differs by [[3, 4], [0, 0]], b by 0 -> L2 norm exactly 5.
    tensors = _tensors(w=np.array([[3.0, 4.0], [0.0, 0.0]], np.float32),
                       b=np.array([1.0], np.float32))
    assert UpdateValidator(fleet=FLEET, max_update_norm=5.0).check(
        TOPIC, _frame(tensors), EXPECT) == "pump-03"
    strict = UpdateValidator(fleet=FLEET, max_update_norm=4.99)
    with pytest.raises(UpdateRejectedError) as info:
        strict.check(TOPIC, _frame(tensors), EXPECT)
    assert info.value.reason is RejectReason.NORM_TOO_LARGE
    assert "update norm 5 > 4.99" in info.value.detail


def test_norm_is_only_checked_for_training() -> None:
    tensors = _tensors(w=np.array([[300.0, 400.0], [0.0, 0.0]], np.float32))
    validator = UpdateValidator(fleet=FLEET, max_update_norm=1.0)
    stats = RoundExpectation(12, 3, "stats", TEMPLATE)
    assert validator.check(TOPIC, _frame(tensors, kind="stats"), stats) == "pump-03"


def test_checks_run_in_a_fixed_order() -> None:
    # A frame wrong in many ways reports the earliest check: fleet before round before base.
    frame = _frame(fleet="other", base_version=9, num_examples=0)
    assert _reason(V, frame) is RejectReason.WRONG_FLEET
    assert _reason(V, _frame(base_version=9, num_examples=0)) is RejectReason.STALE_BASE
    assert _reason(V, _frame(num_examples=0), received=frozenset({"pump-03"})) is (
        RejectReason.REPLAY
    )
