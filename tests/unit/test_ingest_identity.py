"""Ingest instance ids: created once, reused on restart, exclusive while running."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aggregator.ingest_identity import IngestInstance
from fedge.config import IngestConfig
from fedge.errors import ConfigError
from fedge_app.wiring import ingest_client_id


def test_the_id_is_created_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "spool.sqlite.instance"
    with IngestInstance.acquire(path) as first:
        created = first.instance_id
    assert re.fullmatch(r"[0-9a-f]{32}", created)
    assert path.read_text().strip() == created
    with IngestInstance.acquire(path) as again:
        assert again.instance_id == created


def test_a_second_holder_of_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.instance"
    with IngestInstance.acquire(path) as held:
        with pytest.raises(ConfigError, match="another ingest process"):
            IngestInstance.acquire(path)
        assert held.held
    assert not held.held
    IngestInstance.acquire(path).release()  # free again once released


def test_a_file_that_is_not_an_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.instance"
    path.write_text("hello\n")
    with pytest.raises(ConfigError, match="not an instance id"):
        IngestInstance.acquire(path)


def test_client_ids_are_stable_per_instance_and_distinct_between_instances(
    tmp_path: Path,
) -> None:
    cfg_a = IngestConfig(fleet="plant", shared_group="g", spool_path=tmp_path / "a" / "spool")
    cfg_b = IngestConfig(fleet="plant", shared_group="g", spool_path=tmp_path / "b" / "spool")
    assert cfg_a.instance_file == tmp_path / "a" / "spool.instance"
    with (
        IngestInstance.acquire(cfg_a.instance_file) as a,
        IngestInstance.acquire(cfg_b.instance_file) as b,
    ):
        id_a, id_b = ingest_client_id(cfg_a, a), ingest_client_id(cfg_b, b)
    assert id_a != id_b
    assert id_a == f"plant-ingest-g-{a.instance_id[:12]}"
    with IngestInstance.acquire(cfg_a.instance_file) as a_again:
        assert ingest_client_id(cfg_a, a_again) == id_a


def test_an_explicit_client_id_wins_and_is_validated(tmp_path: Path) -> None:
    cfg = IngestConfig(client_id="ingest-east-1", spool_path=tmp_path / "spool")
    with IngestInstance.acquire(cfg.instance_file) as inst:
        assert ingest_client_id(cfg, inst) == "ingest-east-1"
    with pytest.raises(ValueError):
        IngestConfig(client_id="bad id with spaces")


def test_stored_acks_and_a_shared_group_do_not_mix() -> None:
    with pytest.raises(ValueError, match="stored_acks"):
        IngestConfig(shared_group="g", stored_acks=True)
