"""Mosquitto 2.x on loopback with a generated config."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fedge_app.servers.probes import LOOPBACK, answers_mqtt, free_port
from fedge_app.servers.process import ServerProcess

__all__ = ["Mosquitto"]


class Mosquitto(ServerProcess):
    """Mosquitto 2.x on 127.0.0.1 (anonymous access), config ``mosquitto.conf`` in :attr:`root`.

    ``extra_config`` lines are appended to the generated config (later lines win
    where Mosquitto allows redefinition). With ``persistence_dir`` the broker keeps
    sessions and retained messages there across restarts (``persistence true``;
    how often it saves is an ``autosave_interval`` line away).
    """

    program = "mosquitto"
    host = LOOPBACK

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        port: int | None = None,
        extra_config: Sequence[str] = (),
        persistence_dir: Path | str | None = None,
        message_size_limit: int = 16 << 20,
        binary: str | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__(
            root, binary=binary, start_timeout=start_timeout, stop_timeout=stop_timeout
        )
        self._ports_given = port is not None
        self.port = free_port() if port is None else port
        self.extra_config = tuple(extra_config)
        self.persistence_dir = None if persistence_dir is None else Path(persistence_dir)
        self.message_size_limit = message_size_limit
        self.config_path = self.root / "mosquitto.conf"

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://{self.host}:{self.port}"

    def config_text(self) -> str:
        """The mosquitto.conf written at every start."""
        lines = []
        if os.geteuid() == 0:
            # As root Mosquitto would switch to the "mosquitto" user, which cannot
            # write the persistence files in a temp dir that root owns.
            lines.append("user root")
        lines += [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"message_size_limit {self.message_size_limit}",
            # As the shipped and provisioned configs: no Nagle delay on what the broker
            # sends (a PUBLISH behind an unacknowledged packet waited up to 40 ms).
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if self.persistence_dir is None:
            lines.append("persistence false")
        else:
            self.persistence_dir.mkdir(parents=True, exist_ok=True)
            # Mosquitto joins the location and the file name without a separator.
            lines += ["persistence true", f"persistence_location {self.persistence_dir}/"]
        return "\n".join([*lines, *self.extra_config]) + "\n"

    def _command(self) -> list[str]:
        self.config_path.write_text(self.config_text())
        return [str(self.binary), "-c", str(self.config_path)]

    def _ready(self) -> bool:
        return answers_mqtt(self.host, self.port)

    def _pick_ports(self) -> None:
        self.port = free_port()
