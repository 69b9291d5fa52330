"""Running weighted sums of float32 updates: fused float32 partials folded into float64.

The mean reducer spends its time on ``sums += weight * update``. Done in float64
that is three passes over every block (cast, scale, add) through a float64 scratch.
:class:`WeightedSums` instead adds each float32 block into a float32 *partial* sum
with one fused BLAS ``saxpy`` (one pass, no temporary) and folds the partials into
the float64 totals every :attr:`WeightedSums.fold_every` updates, so rounding error
never builds up over more than that many float32 additions, whatever the fleet size:
an entry of the totals is within about ``fold_every * 2**-24`` of the float64
formula, relative to the sum of the magnitudes of its terms (Flower's
``aggregate_inplace`` accumulates every client in float32).

Float32 partials could overflow where float64 sums would not. Each block's
magnitude is bounded before it is added (the tensor's norm where frame decoding
measured it, else ``sqrt(x @ x)``: one pass over a block that the add then reads
from cache), and a tensor's partial is folded early when the
bound of what it holds could pass :data:`PARTIAL_LIMIT`; a block too large on its
own goes through the exact float64 path. So no input that float64 sums take is
lost or changed beyond rounding.

Memory: float64 totals plus float32 partials, 12 bytes a parameter, and one float64
scratch block for the exact path, allocated only if it is ever needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from functools import cache

import numpy as np

from fedge.compression import add_scaled

__all__ = ["PARTIAL_LIMIT", "WeightedSums"]

PARTIAL_LIMIT = 1e37
"""Largest magnitude a float32 partial may reach (float32's largest is 3.4e38)."""

Axpy = Callable[[np.ndarray, np.ndarray, float], None]


@cache
def _axpy() -> Axpy:
    """``y += a * x`` in place on 1-d float32 arrays: BLAS saxpy, numpy if scipy is absent.

    scipy is imported here, on first use, so a device that never aggregates does
    not load it (it comes with the ``server`` extra).
    """
    try:
        from scipy.linalg.blas import saxpy
    except ImportError:  # pragma: no cover - the server extra brings scipy

        def numpy_axpy(y: np.ndarray, x: np.ndarray, a: float) -> None:
            y += np.multiply(x, np.float32(a), dtype=np.float32)

        return numpy_axpy

    def blas_axpy(y: np.ndarray, x: np.ndarray, a: float) -> None:
        out = saxpy(x, y, a=a)
        if out is not y:  # pragma: no cover - y is always contiguous float32 here
            y[...] = out

    return blas_axpy


class WeightedSums:
    """``totals[name] = sum of weight * update[name]`` over the updates added, per tensor.

    Feed one update as :meth:`add_blocks` calls (one per tensor, any order), each
    with the tensor's consecutive flat ``(start, stop, values)`` blocks, then call
    :meth:`end_update`. Blocks are float32 for the fused path; any other dtype is
    added exactly in float64.
    """

    fold_every = 16
    """Updates a float32 partial holds before it is folded into the float64 totals."""

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        self._totals = {name: np.zeros(a.shape, np.float64) for name, a in template.items()}
        self._partials = {name: np.zeros(a.shape, np.float32) for name, a in template.items()}
        self._bounds = dict.fromkeys(template, 0.0)
        """Per tensor: an upper bound on the magnitude of every entry of its partial."""
        self._held: set[str] = set()
        """Tensors whose partial may be non-zero (a bound of 0 is not enough to tell:
        the squares of subnormal entries underflow to 0)."""
        self._pending = 0
        self._scratch: np.ndarray | None = None

    @property
    def names(self) -> set[str]:
        """The tensor names of the template."""
        return set(self._totals)

    def shape(self, name: str) -> tuple[int, ...]:
        """The template shape of tensor ``name``."""
        return self._totals[name].shape

    def add_blocks(
        self,
        name: str,
        blocks: Iterable[tuple[int, int, np.ndarray]],
        weight: float,
        *,
        magnitude: float | None = None,
    ) -> None:
        """Add ``weight * values`` for every block of tensor ``name`` (``weight`` > 0, finite).

        ``magnitude``, a known bound on the tensor's ``|entries|`` (e.g. its norm,
        measured when the frame was decoded), saves bounding each block.
        """
        totals = self._totals[name].reshape(-1)
        partial = self._partials[name].reshape(-1)
        axpy = _axpy()
        prior, held = self._bounds[name], 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            for start, stop, values in blocks:
                block = values.reshape(-1)
                if block.dtype != np.float32:
                    self._add_exact(totals[start:stop], block, weight)
                    continue
                if magnitude is None:
                    bound = weight * math.sqrt(float(np.dot(block, block)))
                else:
                    bound = weight * magnitude
                if not bound <= PARTIAL_LIMIT:  # also a dot that overflowed (inf)
                    self._add_exact(totals[start:stop], block, weight)
                    continue
                if prior + held + bound > PARTIAL_LIMIT:
                    self._fold(name)
                    prior, held = 0.0, 0.0
                axpy(partial[start:stop], block, weight)
                self._held.add(name)
                held = max(held, bound)
        self._bounds[name] = prior + held

    def end_update(self) -> None:
        """One update is complete; fold the partials every :attr:`fold_every` updates."""
        self._pending += 1
        if self._pending >= self.fold_every:
            self.fold()

    def fold(self) -> None:
        """Add every partial into its float64 total and clear it."""
        for name in self._totals:
            self._fold(name)
        self._pending = 0

    def totals(self) -> dict[str, np.ndarray]:
        """The float64 sums (after folding); the arrays stay owned by this object."""
        self.fold()
        return self._totals

    def _fold(self, name: str) -> None:
        if name not in self._held:
            return  # nothing was added since the last fold
        np.add(self._totals[name], self._partials[name], out=self._totals[name])
        self._partials[name].fill(0.0)
        self._bounds[name] = 0.0
        self._held.discard(name)

    def _add_exact(self, totals: np.ndarray, block: np.ndarray, weight: float) -> None:
        """``totals += block.astype(float64) * weight`` through a float64 scratch block."""
        if self._scratch is None or self._scratch.size < block.size:
            self._scratch = np.empty(block.size, np.float64)
        add_scaled(totals, block, weight, self._scratch)
