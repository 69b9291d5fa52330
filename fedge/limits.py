"""The agent's own bounds on what the aggregator may ask of it (pure).

Signatures (:mod:`fedge.signing`) say *who* sent an announcement or a model; these
checks say whether it is *sane*, so that a misconfigured or compromised aggregator
(or, in mode ``off``, anyone on the broker) cannot make an agent train 100 epochs at
batch size 1, summarise a handful of readings into sums that reveal them, load a
model that divides by 1e-38, or jump to version 9999 and stop answering rounds.

Two kinds of answer:

* announcement parameters that only cost resources are **clamped** to the agent's
  limits and every change is reported as an :class:`Adjustment`;
* anything that would be unsafe or meaningless is **refused** with
  :class:`~fedge.errors.RefusedError`, whose ``reason`` is a
  :class:`~fedge.errors.RefusalReason`.

What no bound can catch is a sane-looking but hostile model (say, negated weights):
the aggregator's signature rules out forgeries, and :func:`check_holdout_score`
keeps out a signed model that is much worse on the device's own held-out data
(a poisoned round, a bad server step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedge.errors import RefusalReason, RefusedError
from fedge.messages import RoundAnnouncement, RoundTask
from fedge.spec import ModelSpec

__all__ = [
    "DEFAULT_LIMITS",
    "NORMALISATION",
    "Adjustment",
    "AdmittedRound",
    "AgentLimits",
    "check_announcement",
    "check_global_model",
    "check_holdout_score",
    "check_stats_rows",
]

NORMALISATION = ("input_mean", "input_std")
"""The normalisation buffers every fleet model carries (see fedge.models.base)."""

PositiveSeconds = Annotated[float, Field(gt=0.0, le=30 * 86_400.0)]


class AgentLimits(BaseModel):
    """What an agent accepts from round announcements and global models."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_tasks: frozenset[RoundTask] = frozenset({"train", "evaluate", "stats"})
    # Training cost (clamped). Bounds as in fedge.messages.TrainingConfig.
    max_epochs: Annotated[int, Field(ge=1, le=100)] = 20
    min_batch_size: Annotated[int, Field(ge=1, le=4096)] = 8
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 1024
    max_learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    max_examples: Annotated[int, Field(ge=1)] = 1_000_000
    max_update_bytes: Annotated[int, Field(ge=1024)] = 16 << 20
    # Time (clamped): how far ahead a deadline may be, how long one round may train.
    max_deadline_s: PositiveSeconds = 3_600.0
    max_train_seconds: PositiveSeconds = 600.0
    max_clock_skew_s: Annotated[float, Field(ge=0.0, le=3_600.0)] = 60.0
    # Privacy (refused): a stats round over fewer rows would publish sums that are
    # close to the readings themselves.
    min_stats_examples: Annotated[int, Field(ge=1)] = 32
    # Global models (refused).
    min_std: Annotated[float, Field(gt=0.0)] = 1e-6
    max_std: Annotated[float, Field(gt=0.0)] = 1e6
    max_abs_mean: Annotated[float, Field(gt=0.0)] = 1e9
    max_abs_weight: Annotated[float, Field(gt=0.0)] = 1e4
    max_version_jump: Annotated[int, Field(ge=1)] = 1_000

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_batch_size > self.max_batch_size:
            raise ValueError("min_batch_size must not exceed max_batch_size")
        if self.min_std >= self.max_std:
            raise ValueError("min_std must be below max_std")
        return self


DEFAULT_LIMITS = AgentLimits()


@dataclass(frozen=True, slots=True)
class Adjustment:
    """One announcement parameter the agent lowered (or raised) to its own limit."""

    field: str
    requested: float
    applied: float


@dataclass(frozen=True, slots=True)
class AdmittedRound:
    """An announcement the agent will act on, with its parameters clamped.

    ``train_budget_s`` is how long local work may take: the agent's
    ``max_train_seconds`` or the time left to the (clamped) deadline, the lesser.
    """

    announcement: RoundAnnouncement
    adjustments: tuple[Adjustment, ...]
    train_budget_s: float


def _clamp(
    name: str, value: float, low: float, high: float, adjustments: list[Adjustment]
) -> float:
    applied = min(max(value, low), high)
    if applied != value:
        adjustments.append(Adjustment(name, value, applied))
    return applied


def check_announcement(
    ann: RoundAnnouncement, limits: AgentLimits = DEFAULT_LIMITS, *, now: float
) -> AdmittedRound:
    """Clamp ``ann`` to ``limits`` at time ``now`` (Unix seconds), or refuse it.

    Refused (RefusedError): a task not in ``allowed_tasks`` (TASK_NOT_ALLOWED); issued
    more than ``max_clock_skew_s`` in the future (ISSUED_IN_FUTURE); a deadline before
    it was issued (BAD_DEADLINE) or already past (EXPIRED); a stats round limited to
    fewer than ``min_stats_examples`` rows (TOO_FEW_EXAMPLES). Clamped: epochs,
    batch size, learning rate, max examples (None becomes the agent's cap, silently),
    max update bytes, and a deadline further than ``max_deadline_s`` ahead.
    """
    if ann.task not in limits.allowed_tasks:
        raise RefusedError(RefusalReason.TASK_NOT_ALLOWED, f"task {ann.task!r} is not allowed")
    if ann.issued_at > now + limits.max_clock_skew_s:
        raise RefusedError(
            RefusalReason.ISSUED_IN_FUTURE,
            f"issued at {ann.issued_at}, {ann.issued_at - now:.1f} s ahead of the local clock",
        )
    if ann.deadline < ann.issued_at:
        raise RefusedError(
            RefusalReason.BAD_DEADLINE, f"deadline {ann.deadline} before issue {ann.issued_at}"
        )
    if ann.deadline <= now:
        raise RefusedError(RefusalReason.EXPIRED, f"deadline {ann.deadline} passed at {now}")
    training = ann.training
    if (
        ann.task == "stats"
        and training.max_examples is not None
        and training.max_examples < limits.min_stats_examples
    ):
        raise RefusedError(
            RefusalReason.TOO_FEW_EXAMPLES,
            f"stats round over at most {training.max_examples} rows, "
            f"minimum {limits.min_stats_examples}",
        )
    adjusted: list[Adjustment] = []
    epochs = _clamp("training.epochs", training.epochs, 1, limits.max_epochs, adjusted)
    batch = _clamp(
        "training.batch_size",
        training.batch_size,
        limits.min_batch_size,
        limits.max_batch_size,
        adjusted,
    )
    rate = _clamp(
        "training.learning_rate", training.learning_rate, 0.0, limits.max_learning_rate, adjusted
    )
    examples = limits.max_examples
    if training.max_examples is not None:
        examples = int(
            _clamp("training.max_examples", training.max_examples, 1, examples, adjusted)
        )
    update_bytes = _clamp(
        "max_update_bytes", ann.max_update_bytes, 1024, limits.max_update_bytes, adjusted
    )
    deadline = _clamp("deadline", ann.deadline, now, now + limits.max_deadline_s, adjusted)
    clamped = RoundAnnouncement.model_validate(
        {
            **ann.model_dump(),
            "deadline": deadline,
            "max_update_bytes": int(update_bytes),
            "training": {
                **training.model_dump(),
                "epochs": int(epochs),
                "batch_size": int(batch),
                "learning_rate": rate,
                "max_examples": examples,
            },
        }
    )
    budget = min(limits.max_train_seconds, deadline - now)
    return AdmittedRound(clamped, tuple(adjusted), budget)


def check_stats_rows(rows: int, limits: AgentLimits = DEFAULT_LIMITS) -> None:
    """Refuse (TOO_FEW_EXAMPLES) to publish statistics over fewer than ``min_stats_examples``."""
    if rows < limits.min_stats_examples:
        raise RefusedError(
            RefusalReason.TOO_FEW_EXAMPLES,
            f"{rows} rows, statistics need at least {limits.min_stats_examples}",
        )


def _check_version(
    version: int, previous: int | None, *, authenticated: bool, limits: AgentLimits
) -> None:
    if previous is None:
        return
    if version < previous:
        raise RefusedError(
            RefusalReason.VERSION_ROLLBACK, f"version {version} is older than running {previous}"
        )
    if version == previous:
        # Benign on reconnect (the retained model again); nothing to load either way.
        raise RefusedError(RefusalReason.VERSION_REPEAT, f"version {version} is already running")
    if not authenticated and version - previous > limits.max_version_jump:
        raise RefusedError(
            RefusalReason.VERSION_JUMP,
            f"unsigned version {version} is more than {limits.max_version_jump} "
            f"ahead of running {previous}",
        )


def _peak(name: str, array: np.ndarray) -> float:
    """``max |entry|`` of a numeric tensor (0 if empty); NON_FINITE if it is not numeric
    or a float entry is NaN or infinite (then the peak is too: one pass checks both)."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "fiu":
        raise RefusedError(
            RefusalReason.NON_FINITE, f"tensor {name!r} is not numeric (dtype {arr.dtype})"
        )
    if not arr.size:
        return 0.0
    if arr.dtype.kind != "f":
        return float(np.abs(arr.astype(np.float64)).max())
    peak = float(np.abs(arr).max())
    if not math.isfinite(peak):
        raise RefusedError(RefusalReason.NON_FINITE, f"tensor {name!r} has NaN or infinity")
    return peak


def check_global_model(
    tensors: Mapping[str, np.ndarray],
    spec: ModelSpec,
    *,
    version: int,
    previous_version: int | None,
    authenticated: bool,
    limits: AgentLimits = DEFAULT_LIMITS,
) -> None:
    """Refuse (RefusedError) a global model an agent must not load; return if it may.

    Version: never backwards (VERSION_ROLLBACK), not the running one again
    (VERSION_REPEAT, benign), and, unless ``authenticated`` (its signature verified),
    at most ``max_version_jump`` ahead (VERSION_JUMP). A signed model may jump any
    distance: the aggregator is authoritative and an agent that was offline for
    long must be able to catch up. With no running model (``previous_version=None``)
    any version is taken.

    Tensors: ``input_mean`` and ``input_std`` present (MISSING_NORMALISATION) with
    shape ``(spec.stats_features,)`` (BAD_NORMALISATION); every tensor numeric and
    finite (NON_FINITE); ``min_std <= input_std <= max_std`` (STD_OUT_OF_RANGE);
    ``|input_mean| <= max_abs_mean`` (MEAN_OUT_OF_RANGE); every other float tensor
    within ``max_abs_weight`` (WEIGHT_OUT_OF_RANGE).
    """
    _check_version(version, previous_version, authenticated=authenticated, limits=limits)
    missing = [name for name in NORMALISATION if name not in tensors]
    if missing:
        raise RefusedError(RefusalReason.MISSING_NORMALISATION, f"no tensor {missing[0]!r}")
    # Every tensor numeric and finite first, whatever else is wrong with the model.
    peaks = {name: _peak(name, array) for name, array in tensors.items()}
    expected = (spec.stats_features,)
    for name in NORMALISATION:
        shape = np.shape(tensors[name])
        if shape != expected:
            raise RefusedError(
                RefusalReason.BAD_NORMALISATION, f"{name} has shape {shape}, expected {expected}"
            )
    std = np.asarray(tensors["input_std"], np.float64)
    if std.size and (std.min() < limits.min_std or std.max() > limits.max_std):
        raise RefusedError(
            RefusalReason.STD_OUT_OF_RANGE,
            f"input_std in [{std.min():g}, {std.max():g}], "
            f"allowed [{limits.min_std:g}, {limits.max_std:g}]",
        )
    if peaks["input_mean"] > limits.max_abs_mean:
        raise RefusedError(
            RefusalReason.MEAN_OUT_OF_RANGE,
            f"|input_mean| reaches {peaks['input_mean']:g}, allowed {limits.max_abs_mean:g}",
        )
    for name, peak in peaks.items():
        # Integer tensors are counters, not weights: numeric is all they must be.
        if name in NORMALISATION or np.asarray(tensors[name]).dtype.kind != "f":
            continue
        if peak > limits.max_abs_weight:
            raise RefusedError(
                RefusalReason.WEIGHT_OUT_OF_RANGE,
                f"|{name}| reaches {peak:g}, allowed {limits.max_abs_weight:g}",
            )


def check_holdout_score(candidate_rmse: float, running_rmse: float, *, margin: float) -> None:
    """Refuse (WORSE_ON_HOLDOUT) a model whose held-out RMSE is more than ``margin`` worse.

    ``margin`` is relative: 0.5 refuses a candidate whose RMSE exceeds 1.5 x the
    running model's on the same windows. A non-finite candidate RMSE is refused
    (NON_FINITE_OUTPUT); a non-finite running RMSE (nothing to compare with) lets
    any finite candidate in.
    """
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a non-negative number, got {margin!r}")
    if not math.isfinite(candidate_rmse):
        raise RefusedError(RefusalReason.NON_FINITE_OUTPUT, f"held-out RMSE is {candidate_rmse!r}")
    if not math.isfinite(running_rmse):
        return
    limit = running_rmse * (1.0 + margin)
    if candidate_rmse > limit:
        raise RefusedError(
            RefusalReason.WORSE_ON_HOLDOUT,
            f"held-out RMSE {candidate_rmse:.3f} vs {running_rmse:.3f} of the running model "
            f"(limit {limit:.3f} at margin {margin:g})",
        )
