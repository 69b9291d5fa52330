"""Atomic checkpoints of the global model, so a restarted aggregator carries on.

A checkpoint is one safetensors file (model tensors, plus server-optimiser state
under ``strategy/``) whose string metadata holds version, round and model spec.
It is written to a temporary file, fsynced, then renamed over ``latest`` — a
crash leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from aggregator.state import Checkpoint
from fedge.codec import contiguous
from fedge.errors import StorageError
from fedge.spec import ModelSpec

__all__ = ["CheckpointDirectoryError", "CheckpointStore"]

_STRATEGY_PREFIX = "strategy/"


class CheckpointDirectoryError(StorageError):
    """The checkpoint directory cannot be created or written: the aggregator must not start
    (it would lose every round's result and journal)."""


class CheckpointStore:
    """Keeps ``latest.safetensors`` (and the previous one as ``previous.safetensors``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.latest_path = directory / "latest.safetensors"
        self.previous_path = directory / "previous.safetensors"

    def probe(self) -> None:
        """Create the directory and write, fsync and delete a probe file in it.

        Raises :class:`CheckpointDirectoryError` naming the directory and the OS error.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".probe-", dir=self.directory)
            try:
                os.write(fd, b"fedge")
                os.fsync(fd)
            finally:
                os.close(fd)
                Path(name).unlink(missing_ok=True)
        except OSError as exc:
            raise CheckpointDirectoryError(
                f"checkpoint directory {self.directory} is not usable: {exc.strerror or exc}"
            ) from exc

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write ``checkpoint`` atomically and return its path."""
        tensors = dict(checkpoint.tensors)
        for name, value in checkpoint.strategy_state.items():
            tensors[_STRATEGY_PREFIX + name] = value
        metadata = {
            "fleet": checkpoint.fleet,
            "version": str(checkpoint.version),
            "round_id": str(checkpoint.round_id),
            "stats_done": "1" if checkpoint.stats_done else "0",
            "model_spec": checkpoint.spec.model_dump_json(),
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".ckpt-", dir=self.directory)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                save_file({k: contiguous(v) for k, v in tensors.items()}, tmp, metadata=metadata)
                with tmp.open("rb") as fh:
                    os.fsync(fh.fileno())
                if self.latest_path.exists():
                    # Hard-link then rename: "latest" exists at every instant, so a crash
                    # anywhere here still leaves a complete checkpoint to resume from.
                    prev_tmp = self.directory / ".previous.tmp"
                    prev_tmp.unlink(missing_ok=True)
                    os.link(self.latest_path, prev_tmp)
                    os.replace(prev_tmp, self.previous_path)
                os.replace(tmp, self.latest_path)
            finally:
                tmp.unlink(missing_ok=True)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # make the rename itself durable
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StorageError(f"cannot write checkpoint in {self.directory}: {exc}") from exc
        return self.latest_path

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint, or None if there is none yet."""
        if not self.latest_path.exists():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(self.latest_path), framework="numpy") as fh:
                metadata = fh.metadata() or {}
            tensors = load_file(self.latest_path)
            spec = ModelSpec.model_validate(json.loads(metadata["model_spec"]))
            model = {k: v for k, v in tensors.items() if not k.startswith(_STRATEGY_PREFIX)}
            state = {
                k[len(_STRATEGY_PREFIX) :]: v
                for k, v in tensors.items()
                if k.startswith(_STRATEGY_PREFIX)
            }
            return Checkpoint(
                fleet=metadata["fleet"],
                version=int(metadata["version"]),
                round_id=int(metadata["round_id"]),
                spec=spec,
                tensors=model,
                strategy_state=state,
                stats_done=metadata.get("stats_done", "1") == "1",
            )
        except (OSError, SafetensorError, KeyError, ValueError) as exc:
            raise StorageError(f"checkpoint {self.latest_path} is unreadable: {exc}") from exc
