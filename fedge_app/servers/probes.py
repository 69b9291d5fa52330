"""Loopback probes shared by the launchers: binaries, free ports, bounded waits, plain HTTP."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from fedge.errors import FedgeError

__all__ = [
    "LOOPBACK",
    "SEARCH_DIRS",
    "ServerError",
    "ServerNotInstalledError",
    "answers_http",
    "answers_mqtt",
    "find_binary",
    "free_port",
    "http_request",
    "poll_until",
    "port_open",
    "wait_for_http",
    "wait_for_port",
]

LOOPBACK = "127.0.0.1"
SEARCH_DIRS = ("/usr/sbin", "/usr/bin")
_POLL_S = 0.05


class ServerError(FedgeError):
    """A server process did not start, did not answer in time, or answered an error."""


class ServerNotInstalledError(ServerError):
    """The server's binary is not on PATH nor in /usr/sbin, /usr/bin."""


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else in /usr/sbin or /usr/bin (where Debian puts daemons), else None."""
    found = shutil.which(name)
    if found:
        return found
    for directory in SEARCH_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_request(
    url: str, *, data: bytes | None = None, method: str | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """Plain HTTP to a loopback server; returns (status, body), also for 4xx/5xx.

    Raises ServerError if nothing answered (refused, reset, timed out) and ValueError
    for a URL that is not ``http://127.0.0.1:...``.
    """
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"only loopback servers are reachable from here, not {url}")
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), bytes(exc.read())
    except (OSError, http.client.HTTPException) as exc:
        raise ServerError(f"{method or ('POST' if data else 'GET')} {url}: {exc}") from exc


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# MQTT 3.1.1 CONNECT (protocol "MQTT" level 4, clean session, keepalive 10 s, empty client
# id) and DISCONNECT: a fixed 14-byte probe, not worth a client library's threads.
_MQTT_CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x0a\x00\x00"
_MQTT_DISCONNECT = b"\xe0\x00"


def answers_mqtt(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """True if an MQTT broker on ``host:port`` answers a CONNECT with a CONNACK.

    Any CONNACK counts (even "not authorised"): the broker is up. Unlike an open
    port, this cannot be fooled by some other program listening there.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_MQTT_CONNECT)
            reply = b""
            while len(reply) < 4:  # CONNACK is 4 bytes; each recv is bounded by the timeout
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    return False
                reply += chunk
            sock.sendall(_MQTT_DISCONNECT)
    except OSError:
        return False
    return reply[:2] == b"\x20\x02"


def answers_http(url: str, expect: int) -> bool:
    try:
        status, _ = http_request(url, timeout=1.0)
    except ServerError:
        return False
    return status == expect


def poll_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll ``ready`` until true; ServerError on timeout or if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.poll() is not None:
            raise ServerError(f"{what}: process exited with status {process.returncode}")
        if time.monotonic() >= deadline:
            raise ServerError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(_POLL_S)


def wait_for_port(
    port: int,
    *,
    host: str = LOOPBACK,
    timeout: float = 20.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until something accepts TCP connections on ``host:port`` (at most ``timeout``)."""
    poll_until(
        lambda: port_open(host, port), what=f"{host}:{port}", timeout=timeout, process=process
    )


def wait_for_http(
    url: str,
    *,
    expect: int = 200,
    timeout: float = 20.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until ``GET url`` answers HTTP ``expect`` (at most ``timeout`` seconds)."""
    poll_until(lambda: answers_http(url, expect), what=url, timeout=timeout, process=process)
