"""An in-process MQTT 3.1.1 broker (amqtt) for the zero-setup demo.

It runs amqtt's asyncio broker on a private event loop in a daemon thread, bound
to loopback only. Production fleets use Mosquitto (see ``mosquitto.conf``): the
embedded broker has no persistence, no TLS and no ACLs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from concurrent.futures import Future
from typing import Any

from fedge.errors import TransportError

__all__ = ["EmbeddedBroker"]

log = logging.getLogger(__name__)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager).

    ``port=0`` picks a free port; the chosen one is in :attr:`port` after start.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # Only anonymous auth: amqtt's default set also loads packet/event loggers
            # and the $SYS publisher, which cost CPU the demo's agents need.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

    def start(self, *, timeout: float = 15.0) -> EmbeddedBroker:
        """Start the broker thread and wait until it accepts connections."""
        from amqtt.broker import Broker

        if self.port == 0:
            self.port = _free_port(self.host)
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fedge-broker", daemon=True)
        self._thread.start()

        async def _start() -> Any:
            broker = Broker(self._config(), loop=loop)
            await broker.start()
            return broker

        future: Future[Any] = asyncio.run_coroutine_threadsafe(_start(), loop)
        try:
            self._broker = future.result(timeout)
        except Exception as exc:
            self.stop()
            raise TransportError(f"embedded broker failed to start on {self.url}: {exc}") from exc
        log.info("embedded MQTT broker listening on %s", self.url)
        return self

    def stop(self, *, timeout: float = 10.0) -> None:
        """Shut the broker down and join its thread."""
        loop, broker = self._loop, self._broker
        if loop is None:
            return
        if broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(timeout)
            except Exception as exc:  # shutting down: report, do not mask the caller's error
                log.warning("embedded broker shutdown: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        if not loop.is_running():
            loop.close()
        self._loop = self._thread = self._broker = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
