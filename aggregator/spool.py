"""Disk-backed spool for the robust reducers: one unnamed temporary file per round.

The robust reducers (:mod:`fedge.strategies.reducers`) buffer each update as a row of
float32 coordinates and read them back a column slab at a time. :class:`FileSpool`
keeps those rows in a temporary file in ``directory`` (the config's
``robust.spool_dir``, default the system temp dir) opened with
:func:`tempfile.TemporaryFile`: on Linux the file has no name at all (``O_TMPFILE``)
or is unlinked right after creation, so nothing is left behind when the round
closes, when the reducer is dropped, or when the process is killed. Rows are
written with ``pwrite`` and read with ``preadv`` straight into the caller's
slab, never memory-mapped, so the page cache holds the data, not this process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedge.errors import ConfigError, FedgeError, RejectReason, UpdateRejectedError
from fedge.strategies.reducers import SpoolFactory

__all__ = ["FileSpool", "SpoolError", "SpoolReadError", "file_spool"]

_F32 = 4


class SpoolError(FedgeError):
    """The round's update spool failed (base of :class:`SpoolReadError`)."""


class SpoolReadError(SpoolError, ValueError):
    """The spool could not be read back; a ValueError, so the coordinator fails the round."""


class FileSpool:
    """Float32 rows in an unnamed temporary file. Memory: one row's pieces at a time."""

    def __init__(self, width: int, *, directory: Path | None = None) -> None:
        self._width = int(width)
        self._rows = 0
        self._file: BinaryIO | None = None  # set first: __del__ runs even if opening fails
        try:
            # Unbuffered: pwrite/preadv on the descriptor, no Python-side copy.
            self._file = tempfile.TemporaryFile(  # noqa: SIM115 - closed in close()
                prefix="fedge-round-", dir=directory, buffering=0
            )
        except OSError as exc:
            # Created on a round's first update: refuse that update, keep the service up.
            raise UpdateRejectedError(
                RejectReason.TOO_LARGE, f"cannot create a round spool in {directory}: {exc}"
            ) from exc

    @property
    def width(self) -> int:
        return self._width

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def closed(self) -> bool:
        """True once the file is closed (its space returned to the file system)."""
        return self._file is None

    def _live(self) -> BinaryIO:
        if self._file is None:
            raise ValueError("spool is closed")
        return self._file

    def append(self, parts: Sequence[np.ndarray]) -> None:
        fd = self._live().fileno()
        if sum(int(np.size(p)) for p in parts) != self._width:
            raise ValueError(f"row does not have the spool's {self._width} coordinates")
        offset = self._rows * self._width * _F32
        try:
            for part in parts:
                data = np.ascontiguousarray(part, np.float32).data.cast("B")
                done = 0
                while done < len(data):  # bounded: each write moves forward or raises
                    done += os.pwrite(fd, data[done:], offset + done)
                offset += len(data)
        except OSError as exc:
            # A full disk refuses this update (the coordinator counts it), not the service.
            raise UpdateRejectedError(
                RejectReason.TOO_LARGE, f"cannot buffer the update: {exc.strerror}"
            ) from exc
        self._rows += 1

    def _read_into(self, offset: int, out: np.ndarray) -> None:
        fd = self._live().fileno()
        view = out.data.cast("B")
        got = 0
        try:
            while got < len(view):  # bounded: each read returns > 0 bytes or we stop
                n = os.preadv(fd, [view[got:]], offset + got)
                if not n:
                    raise SpoolReadError(f"round spool truncated at byte {offset + got}")
                got += n
        except OSError as exc:
            raise SpoolReadError(f"cannot read the round spool: {exc}") from exc

    def read_row(self, index: int, out: np.ndarray) -> None:
        if not 0 <= index < self._rows:
            raise IndexError(index)
        self._read_into(index * self._width * _F32, out)

    def read_columns(self, start: int, stop: int, out: np.ndarray) -> None:
        if not 0 <= start <= stop <= self._width:
            raise ValueError(f"columns [{start}, {stop}) outside a row of {self._width}")
        for i in range(self._rows):
            row = out[i, : stop - start]
            if not row.flags.c_contiguous:
                row = np.empty(stop - start, np.float32)
                self._read_into((i * self._width + start) * _F32, row)
                out[i, : stop - start] = row
            else:
                self._read_into((i * self._width + start) * _F32, row)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self) -> None:  # dropped without close(): still return the space
        self.close()


def file_spool(directory: Path | None = None) -> SpoolFactory:
    """A spool factory whose spools are :class:`FileSpool`\\ s in ``directory``."""
    if directory is not None and not os.path.isdir(directory):
        raise ConfigError(f"robust.spool_dir {directory} is not a directory")

    def make(width: int) -> FileSpool:
        return FileSpool(width, directory=directory)

    return make
