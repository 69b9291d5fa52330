"""Scalar codecs for flat float32 vectors: float16, symmetric int8/int4, 4-bit packing.

Every value belongs to a scale group (a tensor, or one output channel of it); a
group's scale is ``max|x| / qmax`` in float32 and its values decode as
``float32(q) * scale``. Encoder and decoder share these functions, so what a
device subtracts into its error-feedback residual is bit for bit what the
aggregator reconstructs.
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = [
    "FLOAT16_MAX",
    "QMAX",
    "dequantise",
    "int4_invalid",
    "pack_int4",
    "quantise",
    "to_float16",
    "unpack_int4",
]

QMAX: Final = {"int8": 127, "int4": 7}
FLOAT16_MAX: Final = float(np.finfo(np.float16).max)
_INT4_BIAS: Final = 8
"""An int4 value q is stored as the nibble q + 8 (1..15); nibble 0 marks padding."""


def to_float16(values: np.ndarray) -> np.ndarray:
    """Round to float16, saturating at +-65504 instead of overflowing to infinity."""
    half: np.ndarray = np.clip(values, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    return half


def quantise(
    values: np.ndarray,
    groups: np.ndarray,
    n_scales: int,
    qmax: int,
    *,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric linear quantisation of float32 ``values`` to ``[-qmax, qmax]``.

    ``groups[i]`` is the scale index of ``values[i]``. Returns ``(q, scales)``: int8
    codes and one float32 scale per group (0 for a group that is all zeros or has no
    values). ``rng`` switches to stochastic rounding: ``floor(x / scale + u)`` with
    ``u ~ U[0, 1)``, unbiased.
    """
    absmax = np.zeros(n_scales, np.float32)
    np.maximum.at(absmax, groups, np.abs(values))
    scales = absmax / np.float32(qmax)
    per_value = scales[groups]
    ratio = np.zeros_like(values)
    np.divide(values, per_value, out=ratio, where=per_value > 0)
    if rng is None:
        rounded = np.rint(ratio)
    else:
        rounded = np.floor(ratio + rng.random(ratio.shape, dtype=np.float32))
    q = np.clip(rounded, -qmax, qmax).astype(np.int8)
    return q, scales


def dequantise(q: np.ndarray, scale: np.ndarray | np.float32) -> np.ndarray:
    """``float32(q) * scale``; ``scale`` is a scalar or one scale per value."""
    out: np.ndarray = np.multiply(q, scale, dtype=np.float32)
    return out


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Two int4 codes per byte: element ``2i`` in the low nibble, ``2i+1`` in the high one."""
    nibbles = (q.astype(np.int16) + _INT4_BIAS).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The int8 codes of elements ``[start, stop)`` of a packed int4 vector."""
    first, last = start // 2, (stop + 1) // 2
    chunk = packed[first:last]
    nibbles = np.empty(2 * chunk.size, np.int8)
    nibbles[0::2] = chunk & 0x0F
    nibbles[1::2] = chunk >> 4
    skip = start - 2 * first
    return nibbles[skip : skip + (stop - start)] - np.int8(_INT4_BIAS)


def int4_invalid(packed: np.ndarray, count: int) -> str | None:
    """Why ``packed`` is not a valid encoding of ``count`` int4 codes, or None."""
    if packed.shape != ((count + 1) // 2,):
        return f"packed int4 shape {packed.shape}, expected ({(count + 1) // 2},)"
    if count == 0:
        return None
    full = count // 2
    if np.any((packed & 0x0F) == 0) or np.any((packed[:full] & 0xF0) == 0):
        return "int4 nibble 0 (reserved for padding) inside the data"
    if count % 2 and packed[-1] >> 4 != 0:
        return "int4 padding nibble is not 0"
    return None
