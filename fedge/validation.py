"""Validation of untrusted model updates against the round they claim to belong to.

Pure: takes the decoded frame, the parsed topic and the round's expectations,
raises :class:`~fedge.errors.UpdateRejectedError` with a :class:`RejectReason`.
The caller counts and logs the reason and carries on.

A training reply must use the codec its round announced (``codec_mismatch``
otherwise); its body is then validated against the round's template by
:func:`fedge.compression.parse_update`, whose result the reducer accumulates
without decoding the update into a copy (:meth:`UpdateValidator.validate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedge.codec import Frame, FrameKind
from fedge.compression import EncodedUpdate, UpdateCodec, parse_update
from fedge.errors import CompressionError, RejectReason, UpdateRejectedError
from fedge.messages import RoundTask
from fedge.topics import ParsedTopic, TopicKind

__all__ = ["TASK_FRAME_KIND", "RoundExpectation", "UpdateValidator", "ValidatedReply"]

TASK_FRAME_KIND: dict[RoundTask, FrameKind] = {
    "train": "update",
    "evaluate": "evaluation",
    "stats": "stats",
}


@dataclass(frozen=True, slots=True)
class RoundExpectation:
    """What a valid reply to the open round looks like."""

    round_id: int
    base_version: int
    task: RoundTask
    template: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Expected tensor names, shapes and dtypes; for training rounds also the values of
    the global weights the round was announced with (the base of delta codecs and of
    the norm check)."""
    codec: UpdateCodec = field(default_factory=UpdateCodec)
    """The codec the round announced (training rounds; others use the default)."""


@dataclass(frozen=True, slots=True)
class ValidatedReply:
    """An accepted reply: its device, and for a training round its validated update."""

    device: str
    update: EncodedUpdate | None
    """Decodes (or accumulates) to the client's weights; None for stats/evaluation."""


@dataclass(frozen=True, slots=True)
class UpdateValidator:
    """Checks one reply frame. ``allowed_devices=None`` accepts any well-named device."""

    fleet: str
    allowed_devices: frozenset[str] | None = None
    max_examples: int = 100_000_000
    max_update_norm: float | None = None

    def check(
        self,
        topic: ParsedTopic,
        frame: Frame,
        expect: RoundExpectation,
        *,
        already_received: frozenset[str] | set[str] = frozenset(),
    ) -> str:
        """Return the sending device if ``frame`` is acceptable, else raise UpdateRejectedError."""
        return self.validate(topic, frame, expect, already_received=already_received).device

    def validate(
        self,
        topic: ParsedTopic,
        frame: Frame,
        expect: RoundExpectation,
        *,
        already_received: frozenset[str] | set[str] = frozenset(),
    ) -> ValidatedReply:
        """Check ``frame`` like :meth:`check`; also return a training reply's parsed update.

        ``frame`` comes from :func:`fedge.codec.decode_frame`, which has refused
        non-finite float tensors: that check is not repeated here.
        """
        header = frame.header
        if topic.kind is not TopicKind.UPDATE or topic.device is None or topic.round_id is None:
            raise UpdateRejectedError(RejectReason.TOPIC_MISMATCH, f"not an update topic: {topic}")
        if topic.fleet != self.fleet or header.fleet != self.fleet:
            raise UpdateRejectedError(
                RejectReason.WRONG_FLEET, f"fleet {header.fleet!r} on {topic.fleet!r}"
            )
        device = topic.device
        if header.device != device or header.round_id != topic.round_id:
            raise UpdateRejectedError(
                RejectReason.TOPIC_MISMATCH,
                f"header says device {header.device!r} round {header.round_id}, topic says "
                f"{device!r} round {topic.round_id}",
            )
        if self.allowed_devices is not None and device not in self.allowed_devices:
            raise UpdateRejectedError(RejectReason.UNKNOWN_DEVICE, f"device {device!r}")
        if header.round_id != expect.round_id:
            raise UpdateRejectedError(
                RejectReason.WRONG_ROUND,
                f"round {header.round_id}, open round is {expect.round_id}",
            )
        if header.kind != TASK_FRAME_KIND[expect.task]:
            raise UpdateRejectedError(
                RejectReason.MALFORMED, f"frame kind {header.kind!r} for a {expect.task} round"
            )
        if header.base_version != expect.base_version:
            raise UpdateRejectedError(
                RejectReason.STALE_BASE,
                f"trained on version {header.base_version}, round is on {expect.base_version}",
            )
        if device in already_received:
            raise UpdateRejectedError(RejectReason.REPLAY, f"second reply from {device!r}")
        if not 0 < header.num_examples <= self.max_examples:
            raise UpdateRejectedError(
                RejectReason.BAD_EXAMPLES, f"num_examples={header.num_examples}"
            )
        codec = frame.codec
        if codec != expect.codec:
            raise UpdateRejectedError(
                RejectReason.CODEC_MISMATCH,
                f"frame codec {_describe(codec)}, round announced {_describe(expect.codec)}",
            )
        if expect.task != "train":
            self._check_tensors(frame.tensors, expect.template)
            return ValidatedReply(device, None)
        if codec.plain:
            # Name, shape and dtype first: they have reasons of their own.
            self._check_tensors(frame.tensors, expect.template)
        try:
            update = parse_update(
                frame.tensors,
                codec,
                template=expect.template,
                base=expect.template if codec.delta else None,
                finite=True,  # decode_frame refused NaN and infinity already
                magnitudes=frame.magnitudes,
            )
        except CompressionError as exc:
            raise UpdateRejectedError(RejectReason.MALFORMED, str(exc)) from exc
        if self.max_update_norm is not None:
            norm = update.distance(expect.template)
            if norm > self.max_update_norm:
                raise UpdateRejectedError(
                    RejectReason.NORM_TOO_LARGE, f"update norm {norm:.3g} > {self.max_update_norm}"
                )
        return ValidatedReply(device, update)

    @staticmethod
    def _check_tensors(
        tensors: Mapping[str, np.ndarray], template: Mapping[str, np.ndarray]
    ) -> None:
        missing = sorted(set(template) - set(tensors))
        if missing:
            raise UpdateRejectedError(RejectReason.MISSING_TENSOR, ", ".join(missing[:5]))
        extra = sorted(set(tensors) - set(template))
        if extra:
            raise UpdateRejectedError(RejectReason.UNEXPECTED_TENSOR, ", ".join(extra[:5]))
        for name, ref in template.items():
            got = tensors[name]
            if got.shape != ref.shape:
                raise UpdateRejectedError(
                    RejectReason.SHAPE_MISMATCH, f"{name}: {got.shape} != {ref.shape}"
                )
            if got.dtype != ref.dtype:
                raise UpdateRejectedError(
                    RejectReason.DTYPE_MISMATCH, f"{name}: {got.dtype} != {ref.dtype}"
                )


def _describe(codec: UpdateCodec) -> str:
    return "float32 (default)" if codec.is_default else codec.model_dump_json(exclude_none=True)
