"""Checkpoints of the global model: round trip, atomic replacement, corrupt files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from aggregator.checkpoint import CheckpointStore
from aggregator.state import Checkpoint
from fedge.errors import StorageError
from fedge.spec import ModelSpec

SPEC = ModelSpec(n_features=3, window=8, hidden=4)


def _checkpoint(version: int = 2, **changes: object) -> Checkpoint:
    fields: dict[str, object] = {
        "fleet": "plant-7",
        "version": version,
        "round_id": version + 1,
        "spec": SPEC,
        "tensors": {
            "w": np.array([[1.0, 2.0], [3.0, float(version)]], np.float32),
            "input_mean": np.array([0.5, 1.5, 2.5], np.float32),
        },
        "strategy_state": {"momentum": np.array([0.25, -0.25], np.float32)},
        "stats_done": True,
    }
    fields.update(changes)
    return Checkpoint(**fields)  # type: ignore[arg-type]


def test_empty_directory_has_no_checkpoint(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "missing").load_latest() is None


def test_round_trip(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt")
    path = store.save(_checkpoint())
    assert path == tmp_path / "ckpt" / "latest.safetensors"
    loaded = store.load_latest()
    assert loaded is not None
    assert loaded.fleet == "plant-7"
    assert loaded.version == 2
    assert loaded.round_id == 3
    assert loaded.spec == SPEC
    assert loaded.stats_done is True
    assert set(loaded.tensors) == {"w", "input_mean"}  # strategy state kept apart
    np.testing.assert_array_equal(loaded.tensors["w"], [[1.0, 2.0], [3.0, 2.0]])
    np.testing.assert_array_equal(loaded.tensors["input_mean"], [0.5, 1.5, 2.5])
    assert loaded.tensors["w"].dtype == np.float32
    assert set(loaded.strategy_state) == {"momentum"}
    np.testing.assert_array_equal(loaded.strategy_state["momentum"], [0.25, -0.25])


def test_round_trip_stats_not_done_and_no_state(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_checkpoint(version=0, stats_done=False, strategy_state={},
                           spec=ModelSpec(name="gru", n_features=5, window=10, hidden=8)))
    loaded = store.load_latest()
    assert loaded is not None
    assert loaded.stats_done is False
    assert loaded.strategy_state == {}
    assert loaded.spec.name == "gru"
    assert loaded.spec.n_features == 5


def test_round_trip_0d_strategy_state(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_checkpoint(strategy_state={"step": np.array(7, np.int64)}))
    loaded = store.load_latest()
    assert loaded is not None
    assert loaded.strategy_state["step"].shape == ()


def test_save_keeps_previous_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_checkpoint(version=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors"]
    store.save(_checkpoint(version=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest.safetensors", "previous.safetensors",
    ]
    store.save(_checkpoint(version=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest.safetensors", "previous.safetensors",
    ]
    latest = store.load_latest()
    assert latest is not None
    assert latest.version == 3
    previous = CheckpointStore(tmp_path)
    previous.latest_path = tmp_path / "previous.safetensors"
    older = previous.load_latest()
    assert older is not None
    assert older.version == 2
    np.testing.assert_array_equal(older.tensors["w"], [[1.0, 2.0], [3.0, 2.0]])


def test_failed_write_keeps_the_old_checkpoint_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_checkpoint(version=1))

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("aggregator.checkpoint.save_file", broken_save)
    with pytest.raises(StorageError, match="cannot write checkpoint"):
        store.save(_checkpoint(version=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors"]
    loaded = store.load_latest()
    assert loaded is not None
    assert loaded.version == 1


def test_crash_between_renames_keeps_a_loadable_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_checkpoint(version=1))
    real_replace = os.replace
    calls: list[tuple[str, str]] = []

    class Crash(BaseException):
        """The process dies here (not an OSError: nothing gets to clean up or retry)."""

    def replace_then_crash(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr("aggregator.checkpoint.os.replace", replace_then_crash)
    with pytest.raises(Crash):
        store.save(_checkpoint(version=2))
    monkeypatch.undo()
    loaded = CheckpointStore(tmp_path).load_latest()
    assert loaded is not None, f"no checkpoint after a crash; renames were {calls}"
    assert loaded.version in (1, 2)


def test_unwritable_directory_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot write checkpoint"):
        CheckpointStore(blocker / "ckpt").save(_checkpoint())


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}", b"\xff" * 100],
    ids=["empty", "text", "bad-header", "ff"],
)
def test_corrupt_file_is_a_storage_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "latest.safetensors").write_bytes(content)
    with pytest.raises(StorageError, match="is unreadable"):
        CheckpointStore(tmp_path).load_latest()


def test_truncated_checkpoint_is_a_storage_error(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_checkpoint())
    data = store.latest_path.read_bytes()
    store.latest_path.write_bytes(data[: len(data) - 5])
    with pytest.raises(StorageError, match="is unreadable"):
        store.load_latest()


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        {"fleet": "f", "version": "1", "round_id": "1"},  # no model_spec
        {"fleet": "f", "version": "one", "round_id": "1", "model_spec": SPEC.model_dump_json()},
        {"fleet": "f", "version": "1", "round_id": "1", "model_spec": "{not json"},
        {"fleet": "f", "version": "1", "round_id": "1", "model_spec": '{"name": "transformer"}'},
    ],
    ids=["no-metadata", "no-spec", "bad-version", "spec-not-json", "spec-invalid"],
)
def test_foreign_safetensors_file_is_a_storage_error(
    tmp_path: Path, metadata: dict[str, str] | None
) -> None:
    path = tmp_path / "latest.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(path), metadata=metadata)
    with pytest.raises(StorageError, match="is unreadable"):
        CheckpointStore(tmp_path).load_latest()


def test_unreadable_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "latest.safetensors").mkdir()  # exists, but is a directory
    with pytest.raises(StorageError, match="is unreadable"):
        CheckpointStore(tmp_path).load_latest()
