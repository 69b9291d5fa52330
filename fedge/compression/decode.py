"""Aggregator side: validate an untrusted compressed body, then decode or accumulate it.

:func:`parse_update` checks everything a device controls (tensor names, dtypes,
shapes, index ranges, int codes, scale and value magnitudes) against the layout the
template fixes, and raises :class:`~fedge.errors.CompressionError` for anything off.
The result, :class:`EncodedUpdate`, decodes tensor by tensor in blocks of
:data:`BLOCK` entries, so accumulating an update into the running float64 sums
needs only two block-sized scratch buffers, never a float64 (or float32) copy of
the update.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np

from fedge.compression.encode import uses_indices
from fedge.compression.layout import Layout, Slot, build_layout
from fedge.compression.quantize import QMAX, dequantise, int4_invalid, unpack_int4
from fedge.compression.scheme import MAX_MAGNITUDE, UpdateCodec
from fedge.errors import CompressionError

__all__ = [
    "BLOCK",
    "EncodedUpdate",
    "accumulate_update",
    "add_scaled",
    "decompress_update",
    "flat_blocks",
    "parse_update",
]

BLOCK = 1 << 17
"""Entries decoded at a time (a 1 MiB float64 scratch block, the size of an L2).

Measured with benchmarks/aggregate.py (100 updates of 1M parameters): 16k-64k
entry blocks are 15-35% slower (numpy's per-call cost, paid three times a block);
128k, 256k and 512k are within noise of each other."""

Local = np.ndarray | tuple[int, int]


def flat_blocks(flat: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, flat[start:stop])`` over a 1-d array, :data:`BLOCK` entries at a time."""
    for s in range(0, flat.size, BLOCK):
        yield s, min(s + BLOCK, flat.size), flat[s : s + BLOCK]


def add_scaled(totals: np.ndarray, block: np.ndarray, weight: float, scratch: np.ndarray) -> None:
    """``totals += block.astype(float64) * weight`` bit for bit, via ``scratch`` (float64).

    Cast, then multiply in place: the same float64 products as
    ``np.multiply(block, weight, dtype=float64)``, ~2x faster (no buffered cast), and
    nothing allocated (``scratch`` has at least ``block.size`` entries).
    """
    product = scratch[: block.size]
    product[...] = block  # exact: float32 (or narrower) -> float64
    product *= weight
    totals += product
"""Positions in a tensor of the values being decoded: an array, or a dense range."""

# Bits set per byte value (np.bitwise_count needs numpy 2; the project supports 1.26).
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)

_VALUE_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "int8": np.dtype(np.int8),
    "int4": np.dtype(np.uint8),
}


def _names(keys: set[str]) -> str:
    """A short, single-line list of (untrusted) tensor names for an error message."""
    items = sorted(str(k)[:64] for k in keys)
    return ", ".join(repr(k) for k in items[:5]) + (" ..." if len(items) > 5 else "")


def _check_range(array: np.ndarray, what: str, *, low: float, high: float) -> None:
    """All entries finite and within ``[low, high]`` (min/max: no temporary array)."""
    if array.size == 0:
        return
    if array.dtype == np.float16:
        # float16 min/max run in software (~50x slower than float32); every finite
        # float16 is within any bound used here, so only NaN/inf needs finding:
        # exponent bits all ones.
        if np.any((array.view(np.uint16) & 0x7C00) == 0x7C00):
            raise CompressionError(f"{what} contains NaN or infinity")
        return
    lo, hi = float(array.min()), float(array.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise CompressionError(f"{what} contains NaN or infinity")
    if lo < low or hi > high:
        raise CompressionError(f"{what} outside [{low:g}, {high:g}]: [{lo:g}, {hi:g}]")


def _array(encoded: Mapping[str, object], key: str, dtype: np.dtype, shape: tuple[int, ...]
           ) -> np.ndarray:
    array = encoded[key]
    if not isinstance(array, np.ndarray):
        raise CompressionError(f"{key!r} is not an array")
    if array.dtype != dtype:
        raise CompressionError(f"{key!r} has dtype {array.dtype}, expected {dtype}")
    if array.shape != shape:
        raise CompressionError(f"{key!r} has shape {array.shape}, expected {shape}")
    return array


class EncodedUpdate:
    """A compressed update that passed validation; decodes to float32 weights.

    Decoded weights are ``base + delta`` (delta codecs) or the weights themselves,
    computed in float32 exactly as the device computed its residual.
    """

    def __init__(
        self,
        layout: Layout,
        codec: UpdateCodec,
        *,
        values: Mapping[str, np.ndarray] | np.ndarray,
        scales: np.ndarray | None,
        positions: np.ndarray | None,
        base: Mapping[str, np.ndarray] | None,
        magnitudes: Mapping[str, float] | None = None,
    ) -> None:
        self.layout = layout
        self.codec = codec
        self._magnitudes = magnitudes
        self._values = values
        self._scales = scales
        self._positions = positions
        self._base = base

    # Decoding ----------------------------------------------------------------------------
    def _quantised(self, slot: Slot, start: int, stop: int, local: Local) -> np.ndarray:
        """Decode values ``[start, stop)`` whose positions in the tensor are ``local``."""
        assert isinstance(self._values, np.ndarray)  # noqa: S101 - flat layouts only
        assert self._scales is not None  # noqa: S101 - int codecs always have scales
        if self.codec.dtype == "int4":
            q = unpack_int4(self._values, start, stop)
        else:
            q = self._values[start:stop]
        if slot.n_scales == 1:
            return dequantise(q, self._scales[slot.scale_offset])
        if isinstance(local, tuple):  # whole rows (see _step): broadcast one scale per row
            first, last = local[0] // slot.row_len, local[1] // slot.row_len
            rows = self._scales[slot.scale_offset + first : slot.scale_offset + last]
            return dequantise(q.reshape(last - first, slot.row_len), rows[:, None]).reshape(-1)
        return dequantise(q, self._scales[slot.scale_offset + local // slot.row_len])

    def _sent(self, slot: Slot, start: int, stop: int, local: Local) -> np.ndarray:
        if self.codec.dtype in ("int8", "int4"):
            return self._quantised(slot, start, stop, local)
        assert isinstance(self._values, np.ndarray)  # noqa: S101 - flat layouts only
        return self._values[start:stop].astype(np.float32)

    def blocks(self, slot: Slot) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, stop, decoded)`` for consecutive flat ranges of one tensor (float32)."""
        if isinstance(self._values, Mapping):  # plain layout: the weights themselves
            yield from flat_blocks(self._values[slot.name].reshape(-1))
            return
        base = None if self._base is None else self._base[slot.name]
        kept = None  # flat positions of this tensor's values (a view, not a copy)
        if self._positions is not None:
            kept = self._positions[slot.kept_offset : slot.kept_offset + slot.kept]
        step = _step(slot)
        for s in range(0, slot.size, step):
            e = min(s + step, slot.size)
            if kept is None:
                delta = self._sent(slot, slot.offset + s, slot.offset + e, (s, e))
                block = delta if base is None else base[s:e] + delta
            else:
                j0, j1 = np.searchsorted(kept, (slot.offset + s, slot.offset + e))
                part = kept[j0:j1] - slot.offset
                start = slot.kept_offset + int(j0)
                delta = self._sent(slot, start, start + part.size, part)
                block = np.zeros(e - s, np.float32) if base is None else base[s:e].copy()
                block[part - s] += delta
            yield s, e, block

    def magnitude(self, name: str) -> float | None:
        """An upper bound on ``|decoded entry|`` of tensor ``name``, if one is known.

        Known for plain bodies whose frame decoding measured each tensor's norm
        (:attr:`fedge.codec.Frame.magnitudes`, where infinity means not measured);
        None otherwise.
        """
        if self._magnitudes is None or not self.codec.plain:
            return None
        bound = self._magnitudes.get(name)
        return bound if bound is not None and math.isfinite(bound) else None

    def decompress(self) -> dict[str, np.ndarray]:
        """The decoded weights as new float32 arrays, by name."""
        out: dict[str, np.ndarray] = {}
        for slot in self.layout.slots:
            array = np.empty(slot.shape, np.float32)
            flat = array.reshape(-1)
            for s, e, block in self.blocks(slot):
                flat[s:e] = block
            out[slot.name] = array
        return out

    def accumulate_into(
        self,
        sums: Mapping[str, np.ndarray],
        *,
        weight: float,
        scratch: np.ndarray | None = None,
    ) -> None:
        """``sums[name] += weight * decoded[name]`` for every tensor, in place.

        ``sums`` are C-contiguous float64 (or float32) arrays shaped like the
        template. The product is formed in a block-sized float64 scratch buffer, so
        the result equals ``sums += decoded.astype(float64) * weight`` bit for bit.
        ``scratch`` (float64, at least :meth:`scratch_size` entries) lets a caller
        that accumulates many updates reuse one buffer: a fresh 1 MiB one per update
        is a fresh mapping whose pages fault in each time.
        """
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be positive and finite, got {weight}")
        names = {s.name for s in self.layout.slots}
        if set(sums) != names:
            raise ValueError("accumulator tensors do not match the template")
        for slot in self.layout.slots:
            acc = sums[slot.name]
            if acc.shape != slot.shape or acc.dtype.kind != "f" or not acc.flags.c_contiguous:
                raise ValueError(f"accumulator {slot.name!r} must be a C-contiguous float array "
                                 f"shaped {slot.shape}")
            if not acc.flags.writeable:
                raise ValueError(f"accumulator {slot.name!r} is read-only")
        longest = self.scratch_size()
        if scratch is None:
            scratch = np.empty(longest, np.float64)
        elif scratch.dtype != np.float64 or scratch.ndim != 1 or scratch.size < longest:
            raise ValueError(f"scratch must be a 1-d float64 array of at least {longest} entries")
        for slot in self.layout.slots:
            flat = sums[slot.name].reshape(-1)
            for s, e, block in self.blocks(slot):
                add_scaled(flat[s:e], block, weight, scratch)

    def scratch_size(self) -> int:
        """Entries of the float64 scratch buffer :meth:`accumulate_into` needs."""
        return max((min(s.size, _step(s)) for s in self.layout.slots), default=0)

    def distance(self, reference: Mapping[str, np.ndarray]) -> float:
        """L2 distance between the decoded weights and ``reference`` (e.g. the base)."""
        total = 0.0
        for slot in self.layout.slots:
            ref = np.asarray(reference[slot.name], np.float32).reshape(-1)
            for s, e, block in self.blocks(slot):
                diff = block.astype(np.float64) - ref[s:e]
                total += float(np.dot(diff, diff))
        return math.sqrt(total)


def _step(slot: Slot) -> int:
    """Block length for a tensor: BLOCK entries, rounded to whole rows for per-row scales."""
    if slot.n_scales == 1 or slot.row_len == 0:
        return BLOCK
    return max(1, BLOCK // slot.row_len) * slot.row_len


def _flat_base(
    base: Mapping[str, np.ndarray], layout: Layout
) -> dict[str, np.ndarray]:
    if set(base) != {s.name for s in layout.slots}:
        raise ValueError("base tensors do not match the template")
    out: dict[str, np.ndarray] = {}
    for slot in layout.slots:
        array = np.asarray(base[slot.name], np.float32)
        if array.shape != slot.shape:
            raise ValueError(f"base {slot.name!r}: shape {array.shape} != {slot.shape}")
        out[slot.name] = array.reshape(-1)
    return out


def _parse_plain(
    encoded: Mapping[str, object], layout: Layout, *, finite: bool
) -> dict[str, np.ndarray]:
    f32 = np.dtype(np.float32)
    values: dict[str, np.ndarray] = {}
    for slot in layout.slots:
        array = _array(encoded, slot.name, f32, slot.shape)
        if not finite:
            _check_range(array, repr(slot.name), low=-np.inf, high=np.inf)
        values[slot.name] = array
    return values


def _positions(encoded: Mapping[str, object], layout: Layout, key: str) -> np.ndarray:
    """Validated increasing flat positions of the kept entries (int64)."""
    if key == "indices":
        indices = _array(encoded, key, np.dtype(np.int32), (layout.kept,))
        positions = indices.astype(np.int64)
        if positions.size and (positions[0] < 0 or positions[-1] >= layout.total):
            raise CompressionError(f"indices outside [0, {layout.total})")
        if positions.size > 1 and not bool(np.all(positions[1:] > positions[:-1])):
            raise CompressionError("indices are not strictly increasing")
    else:
        mask = _array(encoded, key, np.dtype(np.uint8), ((layout.total + 7) // 8,))
        tail = layout.total % 8
        if tail and mask[-1] >> tail:
            raise CompressionError("mask padding bits are not 0")
        # Unpack in blocks: the bits of a 1M-entry mask would be a 1 MB temporary.
        positions = np.empty(int(_POPCOUNT[mask].sum(dtype=np.int64)), np.int64)
        filled = 0
        step = BLOCK // 8
        for first in range(0, mask.size, step):
            found = np.flatnonzero(np.unpackbits(mask[first : first + step], bitorder="little"))
            positions[filled : filled + found.size] = found + 8 * first
            filled += found.size
    counts = np.diff(np.searchsorted(positions, layout.offsets))
    for slot, count in zip(layout.slots, counts.tolist(), strict=True):
        if count != slot.kept:
            raise CompressionError(f"{slot.name!r}: {count} entries sent, top-k keeps {slot.kept}")
    return positions


def parse_update(
    encoded: Mapping[str, np.ndarray],
    codec: UpdateCodec,
    *,
    template: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray] | None = None,
    finite: bool = False,
    magnitudes: Mapping[str, float] | None = None,
) -> EncodedUpdate:
    """Validate the body tensors of an update frame encoded with ``codec``.

    ``template`` (trusted: the round's trainable tensors) fixes names and shapes;
    ``base`` (the global weights the round was built on) is required for delta
    codecs. Raises CompressionError for untrusted input that does not fit, and
    ValueError when ``base`` does not match ``template`` (a caller bug).

    ``finite=True`` says the float tensors are known to hold no NaN or infinity
    (:func:`fedge.codec.decode_frame` refuses those): plain float32 bodies then skip
    a second pass looking for them (ranges are checked all the same).
    ``magnitudes`` (trusted: :attr:`fedge.codec.Frame.magnitudes` of the same
    tensors) are bounds on plain tensors' entries, kept for :meth:`EncodedUpdate.magnitude`.
    """
    layout = build_layout(template, codec)
    flat_base: dict[str, np.ndarray] | None = None
    if codec.delta:
        if base is None:
            raise ValueError("a delta codec needs the base weights")
        flat_base = _flat_base(base, layout)
    sparse = codec.top_k is not None
    expected = {"values"}
    if codec.dtype in QMAX:
        expected.add("scales")
    index_key = "indices" if uses_indices(layout.total, layout.kept) else "mask"
    if sparse:
        expected.add(index_key)
    if codec.plain:
        expected = {s.name for s in layout.slots}
    got = set(encoded)
    if got != expected:
        missing, extra = expected - got, got - expected
        raise CompressionError(
            f"body tensors do not match the {codec.dtype} layout: missing [{_names(missing)}], "
            f"unexpected [{_names(extra)}]"
        )
    if codec.plain:
        return EncodedUpdate(
            layout, codec, values=_parse_plain(encoded, layout, finite=finite), scales=None,
            positions=None, base=None, magnitudes=magnitudes,
        )

    count = layout.kept if sparse else layout.total
    shape = ((count + 1) // 2,) if codec.dtype == "int4" else (count,)
    values = _array(encoded, "values", _VALUE_DTYPES[codec.dtype], shape)
    scales = None
    if codec.dtype in QMAX:
        qmax = QMAX[codec.dtype]
        if codec.dtype == "int4":
            problem = int4_invalid(values, count)
            if problem:
                raise CompressionError(problem)
        elif values.size and int(values.min()) < -qmax:
            raise CompressionError(f"int8 code {int(values.min())} outside [-{qmax}, {qmax}]")
        scales = _array(encoded, "scales", np.dtype(np.float32), (layout.n_scales,))
        _check_range(scales, "scales", low=0.0, high=MAX_MAGNITUDE / qmax)
    else:
        _check_range(values, "values", low=-MAX_MAGNITUDE, high=MAX_MAGNITUDE)
    positions = _positions(encoded, layout, index_key) if sparse else None
    return EncodedUpdate(
        layout, codec, values=values, scales=scales, positions=positions, base=flat_base
    )


def decompress_update(
    encoded: Mapping[str, np.ndarray],
    codec: UpdateCodec,
    *,
    template: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Validate and decode an update body to float32 weights (see :func:`parse_update`)."""
    return parse_update(encoded, codec, template=template, base=base).decompress()


def accumulate_update(
    sums: Mapping[str, np.ndarray],
    encoded: Mapping[str, np.ndarray],
    codec: UpdateCodec,
    *,
    weight: float,
    base: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Validate an update body and add ``weight *`` its decoded weights into ``sums``.

    ``sums`` doubles as the template. Nothing is added unless the whole update is
    valid, so a rejected update never leaves the sums half-updated.
    """
    update = parse_update(encoded, codec, template=sums, base=base)
    update.accumulate_into(sums, weight=weight)
