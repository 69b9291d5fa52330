"""The Gaussian mechanism on model updates: clip the delta, add noise (numpy only)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedge.messages import DpConfig
from fedge.strategies.params import Params

__all__ = ["clip_update", "device_noise_std", "privatize_update", "server_clip_bound"]

# Gaussian concentration: P(||N(0, s^2 I_P)|| >= s (sqrt(P) + t)) <= exp(-t^2 / 2);
# t = 6 leaves an honest noised update above the server's bound with p < 2e-8.
_NOISE_TAIL = 6.0


def device_noise_std(dp: DpConfig) -> float:
    """Per-coordinate noise std each device adds: ``z C / sqrt(expected_clients)``."""
    return dp.noise_multiplier * dp.clip_norm / math.sqrt(dp.expected_clients)


def _check(update: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> None:
    if set(update) != set(base):
        raise ValueError("update and base have different tensors")
    for name, ref in base.items():
        if np.shape(update[name]) != np.shape(ref):
            raise ValueError(f"{name}: shape {np.shape(update[name])} != {np.shape(ref)}")


def clip_update(
    update: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], clip_norm: float
) -> tuple[Params, float]:
    """``base + delta * min(1, C / ||delta||)`` as float32, and ``||delta||`` before clipping.

    ``delta = update - base`` over all tensors together (one L2 norm per update).
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a positive number, got {clip_norm}")
    _check(update, base)
    deltas = {k: np.asarray(update[k], np.float64) - np.asarray(v, np.float64)
              for k, v in base.items()}
    norm = math.sqrt(sum(float(np.vdot(d, d)) for d in deltas.values()))
    if not math.isfinite(norm):
        raise ValueError("update has non-finite values")
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    clipped = {k: (np.asarray(base[k], np.float64) + d * scale).astype(np.float32)
               for k, d in deltas.items()}
    return clipped, norm


def privatize_update(
    update: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
    dp: DpConfig,
    *,
    rng: np.random.Generator,
) -> Params:
    """Clip ``update - base`` to ``dp.clip_norm`` and add the device's Gaussian noise.

    ``base`` is the global model the device trained from (the round's base version),
    ``update`` its locally trained trainable tensors; the result, float32, replaces
    the tensors the device sends. ``rng`` must be unpredictable to the aggregator
    (``numpy.random.default_rng()`` seeds from the OS): noise from a seed it could
    guess could be regenerated and subtracted. (numpy's PCG64 is not a
    cryptographic generator, nor is its floating-point Gaussian free of the
    least-significant-bit leaks known for textbook samplers.)
    """
    clipped, _ = clip_update(update, base, dp.clip_norm)
    std = device_noise_std(dp)
    if std == 0:
        return clipped
    return {
        k: (v.astype(np.float64) + rng.normal(0.0, std, size=v.shape)).astype(np.float32)
        for k, v in clipped.items()
    }


def server_clip_bound(dp: DpConfig, n_params: int) -> float:
    """The norm the server clips each DP update to: ``C + s (sqrt(P) + 6)``.

    An honest update has ``||delta|| <= C`` plus the device's noise of std ``s`` in
    each of ``P`` coordinates, whose norm concentrates at ``s sqrt(P)``; clipping at
    ``C`` would cut the noise and the signal alike. Clipping at this bound changes
    no honest update (probability < 2e-8) and caps what a device that skipped the
    device-side clip can do. It is post-processing: privacy is unaffected.
    """
    return dp.clip_norm + device_noise_std(dp) * (math.sqrt(max(n_params, 0)) + _NOISE_TAIL)
