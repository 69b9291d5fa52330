"""Reading a text file line by line without blocking, optionally following it as it grows.

:class:`LineTail` hands out ``(line_number, bytes)`` pairs, numbered from 1 per file,
so a caller can name the exact line of a bad record. In follow mode (``tail -F``):

* a partial last line is kept until its newline arrives;
* **rotation** (the path now names another file: logrotate's create mode) is noticed
  at end of file; the old file's last unterminated line is complete by then, the new
  file is read from its first line (numbering restarts at 1);
* **truncation** (the file got shorter: logrotate's copytruncate) restarts at line 1;
* a missing file is waited for.

Without follow, the file is read to its end once (:meth:`rewind` starts over).
Lines longer than ``max_line_bytes`` are dropped (reported as ``None``), so a runaway
writer cannot exhaust memory. One call reads at most 64 chunks of ``chunk_bytes``;
nothing here blocks (regular files never do).
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO

__all__ = ["LineTail"]

# Bounds one call's work when a huge (overlong) line is being skipped.
_MAX_CHUNKS_PER_CALL = 64
# How often, at end of file, to stat() the path for rotation or truncation.
_STAT_INTERVAL_S = 0.1


class LineTail:
    """Numbered lines of one file; see the module docstring for follow-mode semantics."""

    def __init__(
        self,
        path: Path,
        *,
        follow: bool,
        from_start: bool = True,
        max_line_bytes: int = 1 << 20,
        chunk_bytes: int = 1 << 16,
    ) -> None:
        self.path = path
        self.follow = follow
        self._from_start = from_start
        self._max = max_line_bytes
        self._chunk = chunk_bytes
        self._fh: BinaryIO | None = None
        self._ident: tuple[int, int] | None = None
        self._lines: deque[tuple[int, bytes | None]] = deque()
        self._buf = b""
        self._overlong = False
        self._line_no = 0
        self._skip_to = 0  # byte offset: complete lines ending before it are not emitted
        self._offset = 0  # byte offset of the start of self._buf
        self._last_stat = -1.0
        self._opened_once = False  # any open attempt made: later files are read whole
        self.eof = False  # without follow: the whole file has been handed out
        self.files_opened = 0

    # Opening ------------------------------------------------------------------------
    def _open(self) -> bool:
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            self._opened_once = True  # when it appears, everything in it is new
            return False
        st = os.fstat(fh.fileno())
        self._fh = fh
        self._ident = (st.st_dev, st.st_ino)
        self._reset_position()
        # Following a log that already exists: only lines written from now on count,
        # except the header (line 1), which the caller needs to map columns. A file
        # that appears (or replaces this one) later is new: read from its start.
        if self.follow and not self._from_start and not self._opened_once:
            self._skip_to = st.st_size
        self._opened_once = True
        self.files_opened += 1
        return True

    def _reset_position(self) -> None:
        self._lines.clear()
        self._buf = b""
        self._overlong = False
        self._line_no = 0
        self._offset = 0
        self._skip_to = 0
        self.eof = False

    def close(self) -> None:
        """Close the file (idempotent); the next call reopens it."""
        if self._fh is not None:
            self._fh.close()
        self._fh = None

    def __enter__(self) -> LineTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rewind(self) -> None:
        """Start again from line 1 of the current file (replay loop)."""
        if self._fh is not None:
            self._fh.seek(0)
        self._reset_position()

    @property
    def is_open(self) -> bool:
        """Whether a file is open."""
        return self._fh is not None

    # Reading ------------------------------------------------------------------------
    def _emit(self, line: bytes | None, end_offset: int) -> None:
        self._line_no += 1
        if self._line_no > 1 and end_offset <= self._skip_to:
            return
        self._lines.append((self._line_no, line))

    def _feed(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if self._overlong:
                self._overlong = False
                self._emit(None, self._offset + nl + 1)
            elif nl - start > self._max:
                self._emit(None, self._offset + nl + 1)
            else:
                line = buf[start:nl]
                self._emit(line[:-1] if line.endswith(b"\r") else line, self._offset + nl + 1)
            start = nl + 1
        self._offset += start
        rest = buf[start:]
        if len(rest) > self._max:
            self._overlong = True
            self._offset += len(rest)
            rest = b""
        self._buf = rest

    def _flush_partial(self) -> None:
        """The unterminated last line of a finished file is a line."""
        if self._overlong:
            self._emit(None, self._offset)
        elif self._buf:
            line = self._buf[:-1] if self._buf.endswith(b"\r") else self._buf
            self._emit(line, self._offset + len(self._buf))
        self._offset += len(self._buf)
        self._buf = b""
        self._overlong = False

    def next_line(self) -> tuple[int, bytes | None] | None:
        """The next complete line (``None`` bytes: too long, dropped), or None for now.

        Raises OSError if the file cannot be read (the caller counts and retries).
        """
        if self._lines:
            return self._lines.popleft()
        if self.eof:
            return None
        if self._fh is None and not self._open():
            return None
        assert self._fh is not None  # noqa: S101 - _open() set it
        for _ in range(_MAX_CHUNKS_PER_CALL):
            data = self._fh.read(self._chunk)
            if not data:
                if not self.follow:
                    self._flush_partial()
                    self.eof = True
                elif self._check_rotation() and not self._lines:
                    continue  # a new or truncated file: read its start now
                break
            self._feed(data)
            if self._lines:
                break
        return self._lines.popleft() if self._lines else None

    def _check_rotation(self) -> bool:
        """Reopen or restart the file if it was rotated or truncated; True if so."""
        now = time.monotonic()
        if now - self._last_stat < _STAT_INTERVAL_S:
            return False
        self._last_stat = now
        assert self._fh is not None  # noqa: S101 - only called with an open file
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # moved away, its replacement not created yet: keep the old handle
        if (st.st_dev, st.st_ino) != self._ident:
            # Rotated. We are at the old file's end, so its last line is complete.
            self._flush_partial()
            pending = list(self._lines)
            self.close()
            opened = self._open()
            self._lines.extendleft(reversed(pending))
            return opened
        if st.st_size < self._fh.tell():
            self._fh.seek(0)  # truncated in place
            self._reset_position()
            return True
        return False
