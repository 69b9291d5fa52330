"""A persistent, exclusive identity per ingest instance: the basis of its MQTT client id.

Ingest keeps a persistent MQTT session so the broker queues for it while it is
down; that only works if a restarted instance comes back with the *same* client
id, and two instances never share one (the broker would take the session over from
whichever connected first, back and forth). So each instance owns a small file,
next to its spool by default, holding a random id (``uuid4``) created on the first
start and reused afterwards; while the process runs the file is locked
(``flock``), so a second process pointed at the same file (the same spool) fails
at start with a clear error instead of stealing the session.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

from fedge.errors import ConfigError

__all__ = ["IngestInstance"]

_VALID = re.compile(r"^[0-9a-f]{32}$")


class IngestInstance:
    """The instance id in ``path``, held exclusively until :meth:`release`."""

    def __init__(self, path: Path, fd: int, instance_id: str) -> None:
        self.path = path
        self.instance_id = instance_id
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path | str) -> IngestInstance:
        """Lock ``path`` (created if missing) and read its id, writing a new one if empty.

        Raises ConfigError if another process holds the file or it cannot be used.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot open ingest instance file {path}: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise ConfigError(
                    f"another ingest process runs with instance file {path}; give each "
                    "instance its own spool (--spool) or instance_id_path"
                ) from exc
            text = os.pread(fd, 256, 0).decode("ascii", errors="replace").strip()
            if not _VALID.match(text):
                if text:
                    raise ConfigError(
                        f"ingest instance file {path} holds {text[:40]!r}, not an instance id; "
                        "remove it to start as a new instance (the broker's session of the "
                        "old one is then orphaned)"
                    )
                text = uuid.uuid4().hex
                os.pwrite(fd, (text + "\n").encode("ascii"), 0)
                os.fsync(fd)
                _fsync_dir(path.parent)
        except ConfigError:
            os.close(fd)
            raise
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot use ingest instance file {path}: {exc}") from exc
        return cls(path, fd, text)

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Unlock and close the file (the id stays for the next start). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _fsync_dir(directory: Path) -> None:
    # The new file's directory entry must be durable too, or a crash can lose the id.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
