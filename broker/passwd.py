"""Mosquitto password files, through the ``mosquitto_passwd`` tool that ships with Mosquitto.

The hash format (``$7$`` PBKDF2-SHA512 in 2.x) belongs to Mosquitto; writing it by hand
would break silently when Mosquitto changes it, so every entry is made by the tool.
Passwords go to the tool on standard input, never on its command line, where any
local user could read them from ``/proc``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from fedge.errors import ConfigError

__all__ = ["DEFAULT_MOSQUITTO_PASSWD", "delete_user", "find_mosquitto_passwd", "set_password"]

DEFAULT_MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")
_TIMEOUT_S = 30.0


def find_mosquitto_passwd(binary: Path | None = None) -> Path:
    """The ``mosquitto_passwd`` executable: ``binary`` if given, else from PATH or /usr/bin.

    Raises :class:`ConfigError` naming the binary when it is not there.
    """
    if binary is None:
        found = shutil.which("mosquitto_passwd")
        binary = Path(found) if found else DEFAULT_MOSQUITTO_PASSWD
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise ConfigError(
            f"password auth needs the mosquitto_passwd binary, not found at {binary}: "
            "install the Debian package 'mosquitto' (apt-get install mosquitto)"
        )
    return binary


def _run(binary: Path, args: list[str], *, stdin: str | None, what: str) -> None:
    try:
        done = subprocess.run(  # noqa: S603 - fixed binary, arguments are validated identifiers
            [str(binary), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{binary} failed to {what}: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(
            f"{binary} failed to {what} (exit {done.returncode}): {detail[-1] if detail else ''}"
        )


def set_password(
    password_file: Path, username: str, password: str, *, binary: Path | None = None
) -> None:
    """Add ``username`` to ``password_file`` (created if missing) or change its password.

    The file ends with mode 0600: it holds password hashes.
    """
    if ":" in username or "\n" in password or not password:
        raise ConfigError("mosquitto passwords must be non-empty single lines; users have no ':'")
    tool = find_mosquitto_passwd(binary)
    create = ["-c"] if not password_file.exists() else []
    # The tool prompts twice ("Password:", "Reenter password:") and reads stdin.
    _run(
        tool,
        [*create, str(password_file), username],
        stdin=f"{password}\n{password}\n",
        what=f"set the password of {username!r} in {password_file}",
    )
    _private(password_file)


def delete_user(password_file: Path, username: str, *, binary: Path | None = None) -> None:
    """Remove ``username`` from ``password_file``; an absent user is a :class:`ConfigError`."""
    tool = find_mosquitto_passwd(binary)
    _run(tool, ["-D", str(password_file), username], stdin=None, what=f"delete {username!r}")
    _private(password_file)


def _private(path: Path) -> None:
    try:
        os.chmod(path, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot restrict {path} to its owner: {exc.strerror}") from exc
