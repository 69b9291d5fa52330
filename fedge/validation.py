"""Validation of untrusted model updates against the round they claim to belong to.

Pure: takes the decoded frame, the parsed topic and the round's expectations,
raises :class:`~fedge.errors.UpdateRejectedError` with a :class:`RejectReason`.
The caller counts and logs the reason and carries on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedge.codec import Frame, FrameKind
from fedge.errors import RejectReason, UpdateRejectedError
from fedge.messages import RoundTask
from fedge.topics import ParsedTopic, TopicKind

__all__ = ["TASK_FRAME_KIND", "RoundExpectation", "UpdateValidator"]

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
    """Expected tensor names, shapes and dtypes (values unused, except for norm checks)."""


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
        self._check_tensors(frame.tensors, expect.template)
        if self.max_update_norm is not None and expect.task == "train":
            norm = float(
                np.sqrt(
                    sum(
                        np.sum((frame.tensors[k].astype(np.float64) - v) ** 2)
                        for k, v in expect.template.items()
                    )
                )
            )
            if norm > self.max_update_norm:
                raise UpdateRejectedError(
                    RejectReason.NORM_TOO_LARGE, f"update norm {norm:.3g} > {self.max_update_norm}"
                )
        return device

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
