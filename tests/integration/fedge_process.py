"""``python -m fedge_app.cli ...`` as a child process, for tests that kill and restart fedge.

A thin launcher, like :mod:`fedge_app.servers` for the real servers: its log in a
file, SIGKILL / SIGTERM / SIGSTOP / SIGCONT by pid, every wait bounded, and always
killed on exit from its ``with`` block.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["REPO", "FedgeProcess"]

REPO = Path(__file__).resolve().parents[2]


class FedgeProcess:
    """One ``fedge`` command run as ``python -m fedge_app.cli`` from this checkout."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.args = [sys.executable, "-m", "fedge_app.cli", *args]
        self.log_path = log_dir / f"{name}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FEDGE_")}
        self.env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # our own interpreter and module
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=self.env,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def pause(self) -> None:
        """SIGSTOP: frozen, its connections open (as a device that hangs)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> int | None:
        """SIGKILL (kill -9) and reap; the return code."""
        self._signal(signal.SIGCONT)  # a stopped process is killed as well, but reap it fast
        self._signal(signal.SIGKILL)
        return self.wait(10.0)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the return code."""
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to end (TimeoutExpired if not)."""
        return None if self.proc is None else self.proc.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.running:
            self.kill()
