"""Compact buffering of a round's updates for the robust reducers, processed in chunks.

A robust aggregate (median, trimmed mean, Krum) needs every update of the round at
once. Holding them as Python lists of float64 arrays (what Flower's ``aggregate_*``
functions are given) costs ``N x P x 8`` bytes; here each update becomes one float32
*row* of ``P`` coordinates (its delta from the round's global model, tensors flattened
in template order) appended to a :class:`RowSpool`, and the reducers read the rows
back a *column slab* at a time: all ``N`` rows, ``chunk`` coordinates wide. Peak
memory is then ``N x chunk`` floats plus the model-sized output, whatever ``P``.

Where the rows live is the caller's choice, so this core stays free of file I/O:

* :class:`MemorySpool` (the default) keeps the rows in memory (``N x P x 4`` bytes):
  for tests, small models and small fleets;
* the aggregator service attaches a disk-backed spool (``aggregator.spool.FileSpool``:
  an unnamed temporary file in a configured directory, gone when closed or when the
  process dies) with :meth:`SpooledReducer.use_spool` before the first update.

:class:`SpooledReducer` is the base of every spooled reducer: it checks, flattens and
appends updates, keeps their weights and delta norms, and runs the chunked pass.
"""

from __future__ import annotations

import contextlib
import math
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np

from fedge.strategies.params import Params
from fedge.strategies.reducers.base import Reducer

__all__ = [
    "DEFAULT_CHUNK",
    "MemorySpool",
    "RowSpool",
    "SpoolFactory",
    "SpooledReducer",
    "check_chunk",
]

DEFAULT_CHUNK = 65_536
"""Coordinates per column slab: 100 updates x 64k x 4 bytes = 25 MiB per slab."""


class RowSpool(Protocol):
    """Fixed-width float32 rows, appended one at a time and read back by column slabs."""

    @property
    def width(self) -> int:
        """Coordinates per row."""
        ...

    @property
    def rows(self) -> int:
        """Rows appended so far."""
        ...

    def append(self, parts: Sequence[np.ndarray]) -> None:
        """Append one row given as consecutive float32 pieces whose sizes sum to ``width``."""
        ...

    def read_row(self, index: int, out: np.ndarray) -> None:
        """Copy row ``index`` into ``out`` (float32, length ``width``)."""
        ...

    def read_columns(self, start: int, stop: int, out: np.ndarray) -> None:
        """Copy columns ``[start, stop)`` of every row into ``out[:rows, :stop - start]``."""
        ...

    def close(self) -> None:
        """Release the rows (idempotent); nothing may be read afterwards."""
        ...


SpoolFactory = Callable[[int], RowSpool]
"""Makes an empty spool for rows of the given width."""


class MemorySpool:
    """Rows kept in memory as float32 arrays. Memory: ``rows x width x 4`` bytes."""

    def __init__(self, width: int) -> None:
        self._width = int(width)
        self._rows: list[np.ndarray] | None = []

    @property
    def width(self) -> int:
        return self._width

    @property
    def rows(self) -> int:
        return len(self._live())

    def _live(self) -> list[np.ndarray]:
        if self._rows is None:
            raise ValueError("spool is closed")
        return self._rows

    def append(self, parts: Sequence[np.ndarray]) -> None:
        pieces = [np.asarray(p, np.float32).ravel() for p in parts]
        row = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        if row.size != self._width:
            raise ValueError(f"row of {row.size} coordinates, spool width is {self._width}")
        self._live().append(row.astype(np.float32, copy=False))

    def read_row(self, index: int, out: np.ndarray) -> None:
        out[:] = self._live()[index]

    def read_columns(self, start: int, stop: int, out: np.ndarray) -> None:
        for i, row in enumerate(self._live()):
            out[i, : stop - start] = row[start:stop]

    def close(self) -> None:
        self._rows = None


def check_chunk(chunk_size: float) -> int:
    """``chunk_size`` as a whole number >= 1 (options arrive as floats from the config)."""
    if not (math.isfinite(chunk_size) and float(chunk_size).is_integer() and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a whole number >= 1, got {chunk_size}")
    return int(chunk_size)


class SpooledReducer(Reducer):
    """Buffers each update's float32 delta as a spool row; reduces in column slabs.

    The template's values are the round's global weights (the base of every
    update); rows hold ``update - base`` so the chunked arithmetic works on small
    numbers, and the result is ``base + reduced delta``. Subclasses implement
    :meth:`_reduce_chunk` and may override :meth:`_prepare` for a first pass
    (Krum's distances) over :meth:`slabs`.

    Memory: the spool (disk-backed in the aggregator service, else ``N x P x 4``
    bytes), one read slab of ``N x chunk`` float32, the subclass's per-slab
    temporaries, and the model-sized result; plus two floats per update.
    """

    def __init__(
        self,
        template: Mapping[str, np.ndarray],
        *,
        chunk_size: float = DEFAULT_CHUNK,
        spool: SpoolFactory = MemorySpool,
    ) -> None:
        super().__init__()
        self.chunk_size = check_chunk(chunk_size)
        self._base = {name: np.asarray(a) for name, a in template.items()}
        self._sizes = {name: int(a.size) for name, a in self._base.items()}
        self.width = sum(self._sizes.values())
        self._factory = spool
        self._spool: RowSpool | None = None
        self.weights: list[float] = []
        """Weight of each row, in arrival order."""
        self.norms: list[float] = []
        """L2 norm of each row (the update's distance from the global model)."""

    # Spool lifecycle ----------------------------------------------------------------------
    def use_spool(self, factory: SpoolFactory) -> None:
        """Buffer rows with ``factory``'s spools; only before the first update."""
        if self._spool is not None:
            raise ValueError("the spool cannot change once updates were added")
        self._factory = factory

    def _live_spool(self) -> RowSpool:
        if self._spool is None:
            self._spool = self._factory(self.width)
        return self._spool

    def close(self) -> None:
        """Release the buffered rows (idempotent). Call when the round closes."""
        if self._spool is not None:
            self._spool.close()

    def __del__(self) -> None:  # a round dropped without close() still frees its rows
        with contextlib.suppress(Exception):  # nothing sensible to do in a finaliser
            self.close()

    # Folding ------------------------------------------------------------------------------
    def _fold(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        if set(update) != set(self._base):
            raise ValueError("update tensors do not match the template")
        for name, base in self._base.items():
            if np.shape(update[name]) != base.shape:
                raise ValueError(f"{name}: shape {np.shape(update[name])} != {base.shape}")
        parts = [
            (np.asarray(update[name], np.float64) - base).astype(np.float32).ravel()
            for name, base in self._base.items()
        ]
        self.add_row(parts, weight)

    def add_row(self, parts: Sequence[np.ndarray], weight: float) -> None:
        """Append one already-flattened delta (template order) with its weight."""
        norm = math.sqrt(sum(float(np.dot(p, p)) for p in parts))
        self._live_spool().append(parts)
        self.weights.append(float(weight))
        self.norms.append(norm)

    # Reducing -----------------------------------------------------------------------------
    def slabs(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, stop, slab)`` over the columns; ``slab`` is ``N x (stop - start)``.

        The slab buffer is reused from one step to the next: copy what must outlive it.
        """
        spool = self._live_spool()
        n = spool.rows
        buf = np.empty((n, min(self.chunk_size, max(self.width, 1))), np.float32)
        for start in range(0, self.width, self.chunk_size):
            stop = min(start + self.chunk_size, self.width)
            view = buf[:, : stop - start]
            spool.read_columns(start, stop, view)
            yield start, stop, view

    def result(self) -> Params:
        """``base + reduce(deltas)``, chunk by chunk. ValueError when nothing was added."""
        if self.count == 0:
            raise ValueError("no updates were aggregated")
        weights = np.asarray(self.weights, np.float64)
        self._prepare(weights)
        delta = np.empty(self.width, np.float32)
        for start, stop, slab in self.slabs():
            delta[start:stop] = self._reduce_chunk(slab, weights)
        out: Params = {}
        offset = 0
        for name, base in self._base.items():
            size = self._sizes[name]
            piece = delta[offset : offset + size].reshape(base.shape)
            out[name] = (base.astype(np.float64) + piece).astype(np.float32)
            offset += size
        return out

    def _prepare(self, weights: np.ndarray) -> None:
        """A first pass before the reducing one (none by default)."""

    @abstractmethod
    def _reduce_chunk(self, slab: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The reduced delta of one column slab (``N x c`` float32) as ``c`` values."""
