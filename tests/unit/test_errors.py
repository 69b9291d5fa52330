"""Rejections carry their reason as data."""

from __future__ import annotations

import pytest

from fedge import errors
from fedge.errors import (
    FedgeError,
    FrameError,
    FrameTooLargeError,
    MessageError,
    NonFiniteTensorError,
    ProtocolError,
    RejectReason,
    TopicError,
    UpdateRejectedError,
)


@pytest.mark.parametrize(
    ("cls", "reason"),
    [
        (ProtocolError, RejectReason.MALFORMED),
        (TopicError, RejectReason.MALFORMED),
        (MessageError, RejectReason.MALFORMED),
        (FrameError, RejectReason.MALFORMED),
        (FrameTooLargeError, RejectReason.TOO_LARGE),
        (NonFiniteTensorError, RejectReason.NON_FINITE),
    ],
)
def test_protocol_errors_carry_their_reason(cls: type[ProtocolError], reason: RejectReason) -> None:
    assert cls.reason is reason
    with pytest.raises(ProtocolError) as info:
        raise cls("bad bytes")
    assert info.value.reason is reason


def test_every_protocol_error_class_in_the_tree_has_a_reason() -> None:
    classes = [
        obj for name in errors.__all__
        if isinstance(obj := getattr(errors, name), type) and issubclass(obj, ProtocolError)
    ]
    # Topic, Message, Frame, FrameTooLarge, NonFiniteTensor, Compression, Chunk, Signature
    # + the root.
    assert len(classes) == 9
    for cls in classes:
        assert "reason" in vars(cls), f"{cls.__name__} inherits its reason implicitly"


def test_update_rejected_keeps_its_instance_reason() -> None:
    exc = UpdateRejectedError(RejectReason.STALE_BASE, "trained on version 3")
    assert isinstance(exc, FedgeError) and not isinstance(exc, ProtocolError)
    assert exc.reason is RejectReason.STALE_BASE
    assert exc.detail == "trained on version 3"
    assert str(exc) == "stale_base: trained on version 3"


def test_one_except_clause_reads_every_reason() -> None:
    raised: list[Exception] = [
        TopicError("t"), FrameTooLargeError("f"), NonFiniteTensorError("n"),
        UpdateRejectedError(RejectReason.REPLAY, "r"),
    ]
    seen = []
    for error in raised:
        try:
            raise error
        except (ProtocolError, UpdateRejectedError) as exc:
            seen.append(exc.reason)
    assert seen == [RejectReason.MALFORMED, RejectReason.TOO_LARGE, RejectReason.NON_FINITE,
                    RejectReason.REPLAY]
