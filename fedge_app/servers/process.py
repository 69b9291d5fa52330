"""The launcher base: one server binary as a child process with its files in one directory."""

from __future__ import annotations

import abc
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from fedge_app.servers.probes import (
    SEARCH_DIRS,
    ServerError,
    ServerNotInstalledError,
    find_binary,
    poll_until,
)

__all__ = ["ServerProcess"]

_LOG_TAIL = 2000


class ServerProcess(abc.ABC):
    """A server binary run as a child process, files in :attr:`root`, log in :attr:`log_path`.

    :meth:`start` returns once the server answers; :meth:`stop` is a graceful
    SIGTERM (SIGKILL after ``stop_timeout``), :meth:`kill` a SIGKILL, and
    :meth:`restart` either of them followed by :meth:`start` on the same ports and
    data. The log is appended across restarts. As a context manager: started on
    enter, stopped and its own temp dir removed on exit.
    """

    program: ClassVar[str]
    """Name of the binary (looked up with :func:`find_binary`)."""

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        binary: str | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self._own_root = root is None
        self.root = (
            Path(tempfile.mkdtemp(prefix=f"fedge-{self.program}-")) if root is None else Path(root)
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self.binary = binary or find_binary(self.program)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.log_path = self.root / f"{self.program}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports_given = False
        self._started_once = False

    # What a subclass defines -----------------------------------------------------------
    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The command line (write config files here); the binary is ``self.binary``."""

    @abc.abstractmethod
    def _ready(self) -> bool:
        """One quick probe: does the server answer yet?"""

    @abc.abstractmethod
    def _pick_ports(self) -> None:
        """Choose fresh free ports (the first start lost its port to another process)."""

    # Lifecycle -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """The process is alive (it may not answer yet, or any more)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, *, timeout: float | None = None) -> Self:
        """Start (no-op while running) and wait until the server answers.

        Raises ServerNotInstalledError without the binary, ServerError (with the log's
        tail) if it exits or does not answer within ``timeout`` (``start_timeout``).
        """
        if self.running:
            return self
        if self.binary is None:
            raise ServerNotInstalledError(
                f"{self.program} is not installed (looked on PATH and in {', '.join(SEARCH_DIRS)})"
            )
        limit = self.start_timeout if timeout is None else timeout
        for attempt in range(3):
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            proc = self._launch()
            try:
                poll_until(self._ready, what=self.program, timeout=limit, process=proc)
            except ServerError as exc:
                self._end(proc, signal_kill=True)
                new_log = self._read_log(log_start)
                if (
                    not self._ports_given
                    and not self._started_once
                    and attempt < 2
                    and "address already in use" in new_log.lower()
                ):
                    self._pick_ports()  # lost a race for the free port: try fresh ones
                    continue
                raise ServerError(f"{exc}; log {self.log_path}:\n{self.log_tail()}") from exc
            self._started_once = True
            return self
        raise AssertionError("unreachable: the last attempt returns or raises")

    def stop(self, *, timeout: float | None = None) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it takes longer than ``timeout``. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._end(proc, signal_kill=False, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to flush or say goodbye. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._end(proc, signal_kill=True)

    def restart(self, *, kill: bool = False, timeout: float | None = None) -> Self:
        """Stop (or with ``kill``, SIGKILL) and start again on the same ports and data."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout=timeout)

    def close(self) -> None:
        """Stop, and remove :attr:`root` if it is this object's own temp dir."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, limit: int = _LOG_TAIL) -> str:
        """The last ``limit`` characters of the server's log ("" if there is none)."""
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        return self._read_log(max(0, size - limit))

    # Internals -------------------------------------------------------------------------
    def _launch(self) -> subprocess.Popen[bytes]:
        command = self._command()
        with self.log_path.open("ab") as log:
            try:
                self._proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.root,
                )
            except OSError as exc:
                raise ServerError(f"cannot run {command[0]}: {exc}") from exc
        return self._proc

    def _end(
        self, proc: subprocess.Popen[bytes], *, signal_kill: bool, timeout: float | None = None
    ) -> None:
        if self._proc is proc:
            self._proc = None
        if proc.poll() is None:
            if signal_kill:
                proc.kill()
            else:
                proc.terminate()
                try:
                    proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
        try:
            proc.wait(timeout=10.0)  # reap; a SIGKILLed process is gone almost at once
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"{self.program} (pid {proc.pid}) survived SIGKILL") from exc

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""
