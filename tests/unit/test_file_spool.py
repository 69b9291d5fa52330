"""The aggregator's disk spool: rows round-trip, files have no name, errors are typed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from aggregator.spool import FileSpool, SpoolReadError, file_spool
from fedge.errors import ConfigError, RejectReason, UpdateRejectedError
from fedge.strategies.reducers import MemorySpool, make_reducer


def test_rows_round_trip_by_row_and_by_column_slab(tmp_path: Path) -> None:
    spool = FileSpool(5, directory=tmp_path)
    spool.append([np.array([1, 2], np.float32), np.array([3, 4, 5], np.float32)])
    spool.append([np.array([6, 7, 8, 9, 10], np.float32)])
    assert (spool.rows, spool.width) == (2, 5)
    assert os.listdir(tmp_path) == []  # unnamed: nothing to leave behind
    row = np.empty(5, np.float32)
    spool.read_row(1, row)
    np.testing.assert_array_equal(row, [6, 7, 8, 9, 10])
    slab = np.zeros((2, 4), np.float32)
    spool.read_columns(1, 4, slab[:, :3])
    np.testing.assert_array_equal(slab, [[2, 3, 4, 0], [7, 8, 9, 0]])
    spool.close()
    assert spool.closed
    with pytest.raises(ValueError, match="closed"):
        spool.read_row(0, row)
    spool.close()  # idempotent


def test_wrong_width_and_range_are_refused(tmp_path: Path) -> None:
    spool = FileSpool(3, directory=tmp_path)
    with pytest.raises(ValueError, match="3 coordinates"):
        spool.append([np.zeros(2, np.float32)])
    with pytest.raises(ValueError, match="outside"):
        spool.read_columns(2, 4, np.zeros((0, 2), np.float32))
    with pytest.raises(IndexError):
        spool.read_row(0, np.zeros(3, np.float32))
    spool.close()


@pytest.mark.parametrize(("name", "options"), [
    ("median", {}), ("trimmed_mean", {"trim_count": 1}), ("krum", {"f": 1}),
    ("multi_krum", {"f": 1, "m": 3}),
])
def test_file_and_memory_spools_give_identical_results(
    tmp_path: Path, name: str, options: dict[str, float]
) -> None:
    rng = np.random.default_rng(3)
    template = {"a": rng.normal(size=(3, 7)).astype(np.float32), "b": np.zeros(5, np.float32)}
    updates = [{k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in template.items()}
               for _ in range(6)]
    results = []
    for spool in (MemorySpool, file_spool(tmp_path)):
        reducer = make_reducer(name, {**options, "chunk_size": 4})(template)
        reducer.use_spool(spool)  # type: ignore[attr-defined]
        for i, u in enumerate(updates):
            reducer.add(u, float(i + 1))
        results.append(reducer.result())
        reducer.close()  # type: ignore[attr-defined]
    for k in template:
        np.testing.assert_array_equal(results[0][k], results[1][k])


def test_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="spool_dir"):
        file_spool(tmp_path / "nope")


def test_a_spool_that_cannot_be_created_refuses_the_update(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    factory = file_spool(gone)
    gone.rmdir()  # the directory disappears while the aggregator runs
    reducer = make_reducer("median")({"w": np.zeros(2, np.float32)})
    reducer.use_spool(factory)  # type: ignore[attr-defined]
    with pytest.raises(UpdateRejectedError) as info:
        reducer.add({"w": np.ones(2, np.float32)}, 1.0)
    assert info.value.reason is RejectReason.TOO_LARGE
    assert reducer.count == 0


def test_a_truncated_spool_fails_the_read_as_a_value_error(tmp_path: Path) -> None:
    spool = FileSpool(4, directory=tmp_path)
    spool.append([np.ones(4, np.float32)])
    assert spool._file is not None
    os.ftruncate(spool._file.fileno(), 8)  # half a row: what a failing disk could leave
    with pytest.raises(SpoolReadError, match="truncated") as info:
        spool.read_row(0, np.zeros(4, np.float32))
    assert isinstance(info.value, ValueError)  # the coordinator fails the round, no crash
    spool.close()
