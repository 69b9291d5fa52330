"""Device side: turn trained weights into the tensors of a compressed update body.

Body layouts (safetensors keys), chosen by the codec alone:

- plain (float32, no delta, no top-k): the weights by name, exactly protocol v1;
- dense: ``values`` = the flat vector of all tensors (sorted by name) as float32,
  float16, int8, or int4 packed into uint8; ``scales`` (float32, one per group) for
  int8/int4;
- sparse (top-k): ``values`` = only the kept entries, in flat order, plus either
  ``mask`` (uint8, one bit per entry, little bit order) or ``indices`` (int32 flat
  positions, increasing), whichever is smaller: indices when ``4 * kept < total / 8``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedge.compression.layout import Layout, Slot, build_layout
from fedge.compression.quantize import QMAX, dequantise, pack_int4, quantise, to_float16
from fedge.compression.scheme import MAX_MAGNITUDE, UpdateCodec
from fedge.errors import CompressionError

__all__ = ["CompressedUpdate", "compress_update", "uses_indices"]

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class CompressedUpdate:
    """What :func:`compress_update` produced.

    ``tensors`` go into the frame body (the codec itself goes into the header as
    ``FrameHeader.codec``; the layout needs no other metadata). ``residual`` is the
    new error-feedback state to persist on the device and pass to the next round's
    call (None when the codec has no error feedback).
    """

    tensors: Tensors
    residual: Tensors | None


def uses_indices(total: int, kept: int) -> bool:
    """Sparse positions travel as int32 indices (else as a bitmask) when that is smaller."""
    return 4 * kept < (total + 7) // 8


def _flat(
    tensors: Mapping[str, np.ndarray], layout: Layout, what: str
) -> np.ndarray:
    """Concatenate ``tensors`` in layout order into one float32 vector (shapes checked)."""
    names = {s.name for s in layout.slots}
    if set(tensors) != names:
        missing, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
        raise ValueError(f"{what} tensors do not match: missing {missing}, unexpected {extra}")
    out = np.empty(layout.total, np.float32)
    for slot in layout.slots:
        array = np.asarray(tensors[slot.name])
        if array.shape != slot.shape:
            raise ValueError(f"{what} {slot.name!r}: shape {array.shape} != {slot.shape}")
        out[slot.offset : slot.offset + slot.size] = array.reshape(-1)
    return out


def _unflat(flat: np.ndarray, layout: Layout) -> Tensors:
    return {
        s.name: flat[s.offset : s.offset + s.size].reshape(s.shape).copy() for s in layout.slots
    }


def _select(u: np.ndarray, layout: Layout) -> np.ndarray:
    """Flat positions of the ``kept`` largest-magnitude entries of every tensor, increasing."""
    parts: list[np.ndarray] = []
    for slot in layout.slots:
        part = u[slot.offset : slot.offset + slot.size]
        if slot.kept == slot.size:
            local = np.arange(slot.size)
        else:
            # argpartition is O(n) (a full sort of a 1M tensor costs ~100 ms on a device);
            # which of several equal magnitudes at the cut is kept is up to numpy, and
            # does not matter: the other goes to the residual.
            order = np.argpartition(np.abs(part), slot.size - slot.kept)
            local = np.sort(order[slot.size - slot.kept :])
        parts.append(local + slot.offset)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _groups(layout: Layout, positions: np.ndarray | None) -> np.ndarray:
    """Scale-group index of every sent value (dense when ``positions`` is None)."""
    parts: list[np.ndarray] = []
    for slot in layout.slots:
        if positions is None:
            local = np.arange(slot.size)
        else:
            local = positions[slot.kept_offset : slot.kept_offset + slot.kept] - slot.offset
        parts.append(_group_of(slot, local))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _group_of(slot: Slot, local: np.ndarray) -> np.ndarray:
    if slot.n_scales == 1:
        return np.full(local.shape, slot.scale_offset, np.int64)
    return slot.scale_offset + local // slot.row_len


def compress_update(
    tensors: Mapping[str, np.ndarray],
    *,
    codec: UpdateCodec,
    base: Mapping[str, np.ndarray] | None = None,
    residual: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
) -> CompressedUpdate:
    """Encode the trained ``tensors`` (float weights) under ``codec``.

    ``base`` (the round's global weights) is required when ``codec.delta``;
    ``residual`` is the previous round's error-feedback state (None = zeros), used
    only when ``codec.error_feedback``. ``seed`` drives stochastic rounding.

    Raises ValueError when ``tensors``, ``base`` or ``residual`` do not have the same
    names and shapes, and CompressionError when a weight is NaN, infinite or beyond
    :data:`MAX_MAGNITUDE` (the decoder would refuse the result).
    """
    layout = build_layout(tensors, codec)
    flat = _flat(tensors, layout, "update")
    if not np.isfinite(flat).all():
        raise CompressionError("update contains NaN or infinity")
    if codec.plain:
        return CompressedUpdate(_unflat(flat, layout), None)
    if codec.delta:
        if base is None:
            raise ValueError("a delta codec needs the base weights")
        flat -= _flat(base, layout, "base")
    if codec.error_feedback and residual is not None:
        flat += _flat(residual, layout, "residual")
    if flat.size and float(np.abs(flat).max()) > MAX_MAGNITUDE:
        raise CompressionError(f"update magnitude exceeds {MAX_MAGNITUDE:g}")

    positions = _select(flat, layout) if codec.top_k is not None else None
    sent = flat if positions is None else flat[positions]
    body: Tensors = {}
    if codec.dtype == "float32":
        decoded = sent.copy()
        body["values"] = decoded
    elif codec.dtype == "float16":
        half = to_float16(sent)
        body["values"] = half
        decoded = half.astype(np.float32)
    else:
        groups = _groups(layout, positions)
        rng = np.random.default_rng(seed) if codec.stochastic_rounding else None
        q, scales = quantise(sent, groups, layout.n_scales, QMAX[codec.dtype], rng=rng)
        body["values"] = pack_int4(q) if codec.dtype == "int4" else q
        body["scales"] = scales
        decoded = dequantise(q, scales[groups])
    if positions is not None:
        if uses_indices(layout.total, layout.kept):
            body["indices"] = positions.astype(np.int32)
        else:
            mask = np.zeros(layout.total, np.bool_)
            mask[positions] = True
            body["mask"] = np.packbits(mask, bitorder="little")

    new_residual: Tensors | None = None
    if codec.error_feedback:
        # What was not delivered: everything outside the kept set, and the rounding
        # error inside it. Added to next round's delta, so no part of any update is lost.
        if positions is None:
            flat -= decoded
        else:
            flat[positions] -= decoded
        new_residual = _unflat(flat, layout)
    return CompressedUpdate(body, new_residual)
