"""Where each tensor of an update sits in the flat arrays of a compressed body.

Both sides derive the layout from the template (names and shapes of the trainable
tensors, which the round fixes), so the body carries no per-tensor metadata: all
tensors, in sorted name order, are concatenated into one flat vector; scales and
kept-entry counts follow the same order. That keeps the safetensors header to a
few entries whatever the model (a per-tensor header entry costs ~70 bytes, a
third of a 5k-parameter model's int4 payload).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedge.compression.scheme import UpdateCodec

__all__ = ["Layout", "Slot", "build_layout", "kept_count"]


def kept_count(size: int, top_k: float | None) -> int:
    """Entries top-k keeps of a tensor of ``size``: ``round(top_k * size)``, at least one.

    ``round`` rather than ``ceil`` so that float noise (0.1 * 30 = 3.0000000000000004)
    cannot add an entry; both sides compute it the same way.
    """
    if top_k is None or size == 0:
        return size
    return min(size, max(1, round(top_k * size)))


@dataclass(frozen=True, slots=True)
class Slot:
    """One tensor's place in the flat layout."""

    name: str
    shape: tuple[int, ...]
    offset: int
    """First flat position of the tensor."""
    size: int
    row_len: int
    """Entries that share one scale (the whole tensor, or one output channel)."""
    scale_offset: int
    n_scales: int
    kept: int
    """Entries sent (``size`` when dense)."""
    kept_offset: int
    """Index of the tensor's first value in the values array."""


@dataclass(frozen=True, slots=True)
class Layout:
    """All slots plus the totals the body's arrays must match."""

    slots: tuple[Slot, ...]
    total: int
    n_scales: int
    kept: int

    @property
    def offsets(self) -> np.ndarray:
        """First flat position of every tensor, plus ``total`` (for searchsorted)."""
        return np.array([s.offset for s in self.slots] + [self.total], np.int64)


def build_layout(template: Mapping[str, np.ndarray], codec: UpdateCodec) -> Layout:
    """Layout of ``template`` (only names and shapes are read) under ``codec``.

    Layouts are immutable and the aggregator asks for the same one for every reply
    of a round: the last few are cached by names, shapes and codec.
    """
    shapes = tuple((name, tuple(int(d) for d in np.shape(template[name])))
                   for name in sorted(template))
    return _layout(shapes, codec)


@functools.lru_cache(maxsize=16)
def _layout(shapes: tuple[tuple[str, tuple[int, ...]], ...], codec: UpdateCodec) -> Layout:
    slots: list[Slot] = []
    offset = scale_offset = kept_offset = 0
    for name, shape in shapes:
        size = math.prod(shape)
        if codec.granularity == "channel" and len(shape) >= 2:
            n_scales = shape[0]
            row_len = size // shape[0] if shape[0] else 0
        else:
            n_scales, row_len = 1, size
        kept = kept_count(size, codec.top_k)
        slots.append(
            Slot(name, shape, offset, size, row_len, scale_offset, n_scales, kept, kept_offset)
        )
        offset += size
        scale_offset += n_scales
        kept_offset += kept
    return Layout(tuple(slots), offset, scale_offset, kept_offset)
