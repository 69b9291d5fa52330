"""A device's training round, prepared on the agent thread and run on the worker.

:meth:`LocalTrainer.prepare` takes everything a train round needs (the running
model's weights, the device's windows, the error-feedback residual from the store)
and returns a :class:`TrainJob` whose ``run`` trains a copy of the model, applies
client-level DP if the round asks for it, and encodes the update with the round's
codec. ``run`` touches neither the store nor the running model, so it can run on the
worker thread while the agent thread keeps sampling; the new residual it leaves is
saved by the agent once the update is published.
"""

from __future__ import annotations

import hashlib
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedge.codec import FrameHeader, encode_frame
from fedge.compression import UpdateCodec, compress_update, resolve_codec, wire_codec
from fedge.messages import RoundAnnouncement
from fedge.models import FaultModel, build_model, copy_state, state_tensors
from fedge.privacy import privatize_update
from fedge.spec import ModelSpec
from fedge.training import WindowDataset, evaluate, train_local

__all__ = ["LocalTrainer", "TrainJob", "residual_key"]

Tensors = dict[str, np.ndarray]
# (number of examples, metrics) -> the update's frame header
HeaderFor = Callable[[int, dict[str, float]], FrameHeader]


def residual_key(spec: ModelSpec, codec: UpdateCodec) -> str:
    """What a saved residual is only valid for: this model spec and this codec."""
    text = spec.model_dump_json() + codec.model_dump_json()
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class TrainJob:
    """One prepared training round."""

    run: Callable[[], bytes]
    """Trains, encodes and returns the update frame (raises TrainingStopped)."""
    residual_key: str | None
    """Where the new error-feedback residual is saved; None without error feedback."""
    new_residual: list[Tensors | None]
    """Filled by ``run``: the residual to save once the update is published."""


class LocalTrainer:
    """Prepares training jobs for one device; reuses one local model per spec."""

    def __init__(self, *, seed: int, device: str, max_train_seconds: float | None) -> None:
        self.seed = seed
        self.device = device
        self.max_train_seconds = max_train_seconds
        self._local: tuple[ModelSpec, FaultModel, torch.Tensor] | None = None

    def prepare(
        self,
        model: FaultModel,
        ann: RoundAnnouncement,
        *,
        train: WindowDataset,
        holdout: WindowDataset,
        budget_s: float,
        halt: threading.Event,
        started: float,
        load_residual: Callable[[str], Tensors | None],
        header_for: HeaderFor,
    ) -> TrainJob:
        """The job for round ``ann`` on ``model`` (copied now: the job never reads it).

        Training stops (TrainingStopped) when ``halt`` is set or ``budget_s`` seconds
        after ``run`` started (:func:`fedge.limits.check_announcement` derives the
        budget). The update is encoded with the round's codec (delta against the
        round's global weights, plus the error-feedback residual ``load_residual``
        gives). ``max_train_seconds`` ends training early with what it has.
        ``started`` (monotonic) is when the device picked the round up: the update's
        ``local_seconds`` counts from there.
        """
        # FedProx's reference (the round's global weights); plain FedAvg never reads it.
        base = (
            {k: v.detach().clone() for k, v in model.named_parameters()}
            if ann.training.proximal_mu > 0
            else None
        )
        local = self._training_model(model.spec)
        copy_state(local, model)
        # crc32, not hash(): str hashes are salted per process, seeds must be reproducible.
        seed = zlib.crc32(f"{self.seed}:{self.device}:{ann.round_id}".encode())
        codec = resolve_codec(ann.codec)
        dp = ann.training.dp
        # The device's starting weights: needed for DP's clip and a delta codec only.
        round_weights = (
            state_tensors(model, trainable_only=True) if dp is not None or codec.delta else {}
        )
        base_weights = round_weights if codec.delta else None
        key = residual_key(model.spec, codec) if codec.error_feedback else None
        residual = load_residual(key) if key is not None else None
        # Two clocks, on purpose: the device's own ``max_train_seconds`` ends training
        # early and sends what it has (the busy rule only starts a round whose deadline
        # is further away than that); ``budget_s`` (the agent's limits and the deadline)
        # is the safety stop, after which the round is declined as ``train_timeout``.
        partial_after = self.max_train_seconds
        new_residual: list[Tensors | None] = []

        def run() -> bytes:
            over = time.monotonic() + budget_s

            def should_stop() -> bool:
                return halt.is_set() or time.monotonic() > over

            # The base model's error on the held-out units (``local`` still holds it).
            before = evaluate(local, holdout)
            result = train_local(
                local, train, ann.training, seed=seed, reference=base, should_stop=should_stop,
                time_budget_s=partial_after,
            )
            metrics = {
                "train_loss": result.loss,
                "val_rmse": before.rmse,
                "val_examples": float(before.num_examples),
                "train_steps": float(result.steps),
            }
            weights = state_tensors(local, trainable_only=True)
            if dp is not None:
                # Client-level DP on the device: clip the change and add Gaussian noise here,
                # where the aggregator cannot take it out. The generator is seeded from the
                # OS, never from the device's reproducible seed (noise one could regenerate
                # could be subtracted).
                weights = privatize_update(
                    weights, round_weights, dp, rng=np.random.default_rng()
                )
            compressed = compress_update(
                weights, codec=codec, base=base_weights, residual=residual, seed=seed,
            )
            new_residual.append(compressed.residual)
            # All local work of the round (data, training, encoding): what the round
            # waited for on this device, apart from the network.
            metrics["local_seconds"] = time.monotonic() - started
            header = header_for(result.num_examples, metrics)
            if not codec.is_default:
                header = header.model_copy(update={"codec": wire_codec(codec)})
            return encode_frame(header, compressed.tensors)

        return TrainJob(run=run, residual_key=key, new_residual=new_residual)

    def _training_model(self, spec: ModelSpec) -> FaultModel:
        """The model a round trains (a copy of the running model's architecture), reused.

        One job runs at a time, so one model per spec serves every round; building it
        again cost ~1 ms a round, half of it in ``torch.manual_seed``. The global torch
        RNG (dropout draws from it) is left exactly as ``build_model`` leaves it, so a
        round trains bit for bit as it did with a freshly built model.
        """
        cached = self._local
        if cached is None or cached[0] != spec:
            model = build_model(spec)
            cached = self._local = (spec, model, torch.get_rng_state())
        torch.set_rng_state(cached[2])
        return cached[1]
