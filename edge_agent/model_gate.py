"""Whether a global model may replace the one an agent runs (issue 12.3: safe updates).

A global model that arrived (and, in mode ``verify``, whose signature checked out)
still has to pass, in this order:

1. **version**: never lower than the running one, nor than the highest version the
   device ever ran (persisted in its store, so an agent restart or a retained
   message from an old broker snapshot cannot roll it back); the running version
   again is ``version_repeat`` (benign: the retained model after a reconnect);
2. **limits** (:func:`fedge.limits.check_global_model`): normalisation present and
   sane, every tensor finite and bounded, no unsigned version jump;
3. **smoke pass**: the model's outputs on up to ``probe_windows`` stored windows are
   finite (``non_finite_output``) and no predicted RUL exceeds ``max_abs_rul`` cycles
   (``output_out_of_range``: no machine lives that long, and such outputs overflow
   every error metric);
4. **held-out score**: with an acceptance margin, a running model and held-out
   windows, its RMSE on the device's held-out units is at most ``1 + margin`` times
   the running model's (``worse_on_holdout``). Version 0 (normalisation only) and
   the first model a device gets are not compared: there is nothing to compare with.

Every refusal is a :class:`~fedge.errors.RefusedError` whose ``reason`` is data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedge.codec import Frame
from fedge.errors import RefusalReason, RefusedError
from fedge.limits import AgentLimits, check_global_model, check_holdout_score
from fedge.models import FaultModel, build_model, load_tensors
from fedge.spec import ModelSpec
from fedge.training import WindowDataset, evaluate, peak_rul

__all__ = ["ModelGate", "Vetted"]


@dataclass(frozen=True, slots=True)
class Vetted:
    """A model that passed every check, ready to replace the running one."""

    model: FaultModel
    version: int
    holdout_rmse: float | None
    """Its RMSE on the held-out windows, if it was scored."""


@dataclass(frozen=True, slots=True)
class ModelGate:
    """The checks of the module docstring, with one agent's settings."""

    limits: AgentLimits
    margin: float | None
    authenticated: bool
    """True when global models are signature-checked (mode ``verify``)."""
    probe_windows: int = 64
    max_abs_rul: float = 1e6

    def vet(
        self,
        frame: Frame,
        *,
        running: FaultModel | None,
        running_version: int | None,
        floor: int | None,
        holdout: Callable[[ModelSpec], WindowDataset],
        probe: Callable[[ModelSpec], np.ndarray | None],
        spare: FaultModel | None = None,
    ) -> Vetted:
        """Build ``frame``'s model and check it; raise RefusedError (or FrameError).

        ``floor``: the highest version this device ever ran (None if none).
        ``holdout(spec)``: the device's held-out windows for ``spec``; ``probe(spec)``:
        some stored windows for the smoke pass (None if the device has none yet).
        ``spare``: a model nothing else uses (the agent's previous running model):
        if it has the frame's spec, the candidate is loaded into it (every tensor of
        its state, as into a new one) instead of building a model, which is most of
        this check's cost.
        """
        header = frame.header
        version = header.version
        spec = header.model
        if version is None or spec is None:  # checked by the agent before; keeps mypy honest
            raise RefusedError(RefusalReason.BAD_NORMALISATION, "global model without version/spec")
        if floor is not None and version < floor:
            raise RefusedError(
                RefusalReason.VERSION_ROLLBACK,
                f"version {version} is older than version {floor} this device already ran",
            )
        check_global_model(
            frame.tensors,
            spec,
            version=version,
            previous_version=running_version if running is not None else None,
            authenticated=self.authenticated,
            limits=self.limits,
        )
        reuse = spare is not None and spare is not running and spare.spec == spec
        candidate = spare if reuse and spare is not None else build_model(spec)
        load_tensors(candidate, frame.tensors)
        windows = probe(spec)
        if windows is not None and windows.shape[0]:
            peak = peak_rul(candidate, windows[: self.probe_windows])
            if math.isnan(peak):
                raise RefusedError(
                    RefusalReason.NON_FINITE_OUTPUT,
                    f"version {version} gives NaN or infinity on stored windows",
                )
            if peak > self.max_abs_rul:
                raise RefusedError(
                    RefusalReason.OUTPUT_OUT_OF_RANGE,
                    f"version {version} predicts RUL {peak:g} cycles",
                )
        score: float | None = None
        if self.margin is not None and running is not None and version > 0:
            data = holdout(spec)
            if len(data):
                # Windows the probe did not see may still overflow: inf is refused below.
                with np.errstate(over="ignore", invalid="ignore"):
                    score = evaluate(candidate, data).rmse
                    reference = evaluate(running, holdout(running.spec)).rmse
                check_holdout_score(score, reference, margin=self.margin)
        return Vetted(candidate, version, score)
