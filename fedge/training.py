"""Local training, evaluation and inference on windowed sensor data (no I/O).

The same functions serve the edge agent, the centralised baseline and the
benchmarks, so federated and central numbers are computed the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from fedge.errors import FedgeError
from fedge.lean_torch import adam_step, avoid_dynamo_import
from fedge.messages import TrainingConfig
from fedge.models import FaultModel

__all__ = [
    "Evaluation",
    "TrainResult",
    "TrainingStopped",
    "WindowDataset",
    "evaluate",
    "peak_rul",
    "predict",
    "set_torch_threads",
    "train_local",
]

# The failure head is auxiliary; the RUL regression is what the fleet is scored on.
# (Setting it to 0 made no measurable difference to the RUL validation error.)
_FAILURE_LOSS_WEIGHT = 0.1


class TrainingStopped(FedgeError):
    """Local training was interrupted by its ``should_stop`` callback."""


@dataclass(frozen=True, slots=True)
class WindowDataset:
    """Windows ``x`` (N, W, F) float32 with RUL labels ``rul`` (N,) in cycles."""

    x: np.ndarray
    rul: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim != 3 or self.rul.shape != (self.x.shape[0],):
            raise ValueError(f"windows {self.x.shape} and labels {self.rul.shape} do not match")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def concat(
        cls, parts: list[WindowDataset], *, n_features: int, window: int, release: bool = False
    ) -> WindowDataset:
        """Concatenate datasets (an empty list gives an empty dataset of the right shape).

        ``release=True`` empties ``parts`` as each one is copied, so a caller that
        holds no other reference to them never has every part and the whole copy in
        memory at once (on a device, the windows are most of the agent's memory).
        """
        if not parts:
            return cls(np.zeros((0, window, n_features), np.float32), np.zeros(0, np.float32))
        total = sum(len(p) for p in parts)
        first = parts[0]
        x = np.empty((total, *first.x.shape[1:]), first.x.dtype)
        rul = np.empty(total, first.rul.dtype)
        at = 0
        for i in range(len(parts)):
            part = parts[0] if release else parts[i]
            x[at : at + len(part)] = part.x
            rul[at : at + len(part)] = part.rul
            at += len(part)
            if release:
                del parts[0], part  # its windows go now, not when the copy is complete
        return cls(x, rul)


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What one call of :func:`train_local` did.

    ``out_of_time`` is True when the time budget ended training before its last
    mini-batch: the model holds the steps done so far (``steps``).
    """

    loss: float
    num_examples: int
    steps: int
    out_of_time: bool = False


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Errors in cycles; ``rmse`` is the fleet's headline validation error."""

    rmse: float
    mae: float
    num_examples: int


def set_torch_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads for torch in this process (a device leaves the
    other cores to sampling and MQTT)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def _targets(model: FaultModel, rul: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    capped = rul.clamp(max=model.spec.rul_cap)
    failing = (rul <= model.spec.horizon).to(torch.float32)
    return capped, failing


def train_local(
    model: FaultModel,
    data: WindowDataset,
    config: TrainingConfig,
    *,
    seed: int = 0,
    reference: Mapping[str, torch.Tensor] | None = None,
    should_stop: Callable[[], bool] | None = None,
    time_budget_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` epochs of shuffled mini-batches.

    Loss: MSE of the RUL on the ``rul / rul_cap`` scale plus 0.1 x BCE of the
    failure-within-horizon head; Adam at a constant ``config.learning_rate``, a
    fresh optimiser per call (so every federated round starts from the global
    weights alone). ``reference`` (the global weights) with
    ``config.proximal_mu > 0`` adds FedProx's proximal term
    mu/2 * ||w - w_global||^2, keeping non-IID clients from drifting.

    Settings validated for the default ``cnn`` model on C-MAPSS FD001 (5-fold
    cross-validation over training engines): centrally, 50 epochs at batch 128
    or 256, lr 1e-3, one call per epoch (the validation curve is flat from ~35 to
    60 epochs, so the exact count is not critical); federated with 10 clients,
    10 local epochs per round at batch 128, lr 1e-3,
    converges in ~20 FedAvg rounds (IID and lifetime-skewed splits alike). A
    cosine learning-rate decay within a call was worth only ~0.1 RMSE, not enough
    to justify a schedule field in :class:`TrainingConfig`.

    ``should_stop`` is asked before every mini-batch; when it answers True training
    ends at once with :class:`TrainingStopped` (an agent asked to shut down must not
    wait for the rest of a round; the model is left half-trained, so discard it).

    ``time_budget_s`` bounds the call's duration on ``clock``: once it is spent,
    training ends after the current mini-batch (at least one is always done) and
    the result says ``out_of_time``; the model is then a valid, if shorter, round of
    local training, which a small device sends rather than miss the round.
    """
    n = len(data)
    if n == 0:
        return TrainResult(loss=math.nan, num_examples=0, steps=0)
    # The windows stay where they are (no copy of a subset: on a device that is the
    # size of the dataset again); a subset is a row index into them.
    rows: torch.Tensor | None = None
    labels = data.rul
    if config.max_examples is not None and n > config.max_examples:
        keep = np.random.default_rng(seed).choice(n, config.max_examples, replace=False)
        rows = torch.from_numpy(keep)
        labels = data.rul[keep]
        n = len(keep)
    x = torch.from_numpy(data.x)
    rul, failing = _targets(model, torch.from_numpy(labels))
    # Eager Adam without torch's compiler stack (71 MiB, ~1 s): see fedge.lean_torch.
    avoid_dynamo_import()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    cap = model.spec.rul_cap
    mu = config.proximal_mu
    params = dict(model.named_parameters())
    model.train()
    total, steps = 0.0, 0
    give_up = math.inf if time_budget_s is None else clock() + time_budget_s
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            if should_stop is not None and should_stop():
                model.eval()
                raise TrainingStopped(f"training stopped after {steps} step(s)")
            idx = order[start : start + config.batch_size]
            pred_rul, fail_logit = model(x[idx if rows is None else rows[idx]])
            # The functions nn.MSELoss / nn.BCEWithLogitsLoss call, without building the
            # two modules on every call (a device trains a round in as little as one step).
            loss = F.mse_loss(pred_rul / cap, rul[idx] / cap) + (
                _FAILURE_LOSS_WEIGHT * F.binary_cross_entropy_with_logits(fail_logit, failing[idx])
            )
            if reference is not None and mu > 0:
                prox = sum(((params[k] - reference[k]) ** 2).sum() for k in reference)
                loss = loss + 0.5 * mu * prox
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            adam_step(optimiser)
            total += float(loss.detach())
            steps += 1
            if time_budget_s is not None and clock() >= give_up and steps < _total_steps(
                n, config
            ):
                model.eval()
                return TrainResult(total / steps, n, steps, out_of_time=True)
    model.eval()
    return TrainResult(loss=total / steps, num_examples=n, steps=steps)


def _total_steps(n: int, config: TrainingConfig) -> int:
    return config.epochs * -(-n // config.batch_size)


@torch.inference_mode()
def predict(
    model: FaultModel, x: np.ndarray, *, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted RUL (cycles, clipped at 0) and failure probability for windows ``x``."""
    if model.training:  # eval() walks every submodule: ~25 us a call on a device
        model.eval()
    ruls, probs = [], []
    for start in range(0, x.shape[0], batch_size):
        rul, logit = model(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])))
        ruls.append(rul.clamp(min=0.0).numpy())
        probs.append(torch.sigmoid(logit).numpy())
    if not ruls:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(ruls), np.concatenate(probs)


@torch.inference_mode()
def peak_rul(model: FaultModel, x: np.ndarray) -> float:
    """The largest RUL :func:`predict` would give for windows ``x`` (0 for none), or NaN
    if it would give a NaN (RUL or failure probability) or an infinite RUL.

    What a smoke test of a new model needs, in one forward pass without the
    clipping, sigmoid and copies of :func:`predict` (the agent runs one on every
    global model before it trains on it).
    """
    if model.training:
        model.eval()
    if x.shape[0] == 0:
        return 0.0
    rul, logit = model(torch.from_numpy(np.ascontiguousarray(x)))
    if bool(rul.isnan().any()) or bool(logit.isnan().any()):
        return math.nan
    # predict clips at 0, so -inf (or any negative) reads as 0 there; +inf stays.
    peak = max(float(rul.max()), 0.0)
    return peak if math.isfinite(peak) else math.nan


def evaluate(model: FaultModel, data: WindowDataset) -> Evaluation:
    """RMSE and MAE (cycles) of the RUL head against labels capped like training targets."""
    if len(data) == 0:
        return Evaluation(rmse=math.nan, mae=math.nan, num_examples=0)
    pred, _ = predict(model, data.x)
    err = pred - np.minimum(data.rul, model.spec.rul_cap)
    return Evaluation(
        rmse=float(np.sqrt(np.mean(err**2))),
        mae=float(np.mean(np.abs(err))),
        num_examples=len(data),
    )
