"""Security mode resolution, key loading from [security] paths, the pure helpers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from broker.provision import provision_fleet
from fedge.config import AgentConfig, AgentSecurity, ServiceSecurity, load_config
from fedge.errors import ConfigError, RefusalReason, RefusedError, RejectReason, SignatureError
from fedge.limits import check_holdout_score
from fedge.signing import (
    KeyRegistry,
    Signer,
    SigningKey,
    StatusStamps,
    verify_frame,
    verify_message,
)
from fedge.tally import RejectionTally
from fedge_app.wiring import agent_security, service_security

KEY = SigningKey.from_seed(bytes(range(32)), signer="pump-01")
PUBLIC = KEY.verify_key.base64


def test_mode_defaults_to_verify_only_when_keys_are_configured() -> None:
    assert AgentSecurity().resolved_mode == "off"
    assert AgentSecurity(signing_key=Path("k.pem")).resolved_mode == "off"
    assert AgentSecurity(aggregator_public_key=PUBLIC).resolved_mode == "verify"
    assert AgentSecurity(aggregator_public_key=PUBLIC, mode="off").resolved_mode == "off"
    assert ServiceSecurity().resolved_mode == "off"
    assert ServiceSecurity(key_registry=Path("r.json")).resolved_mode == "verify"
    with pytest.raises(ConfigError, match="aggregator_public_key"):
        AgentSecurity(mode="verify").policy()
    with pytest.raises(ConfigError, match="key_registry"):
        ServiceSecurity(mode="verify").policy()
    with pytest.raises(ConfigError):
        AgentSecurity(aggregator_public_key="not-a-key").policy()


def test_provisioned_configs_load_into_verifying_signing_services(tmp_path: Path) -> None:
    fleet = provision_fleet(tmp_path / "fleet", fleet="plant-7", devices=["pump-01"])
    agent_cfg = load_config(AgentConfig, fleet.identity("pump-01").config_file)
    assert agent_cfg.security.resolved_mode == "verify"
    authenticator, signer = agent_security(agent_cfg.security, device="pump-01")
    assert authenticator.mode == "verify" and signer.signs
    topic = "fedge/v1/plant-7/devices/pump-01/status"
    signed = signer.sign(topic, b"{}", now=1_700_000_000.0)
    # The aggregator verifies it with the provisioned registry.
    registry = KeyRegistry.from_json(fleet.registry_file.read_bytes(), fleet="plant-7")
    assert verify_message(signed, topic, registry, now=1_700_000_000.0).payload == b"{}"
    service = ServiceSecurity(
        signing_key=fleet.identity("aggregator").signing_key, key_registry=fleet.registry_file
    )
    verifier, aggregator = service_security(service, fleet="plant-7", signer="aggregator")
    assert verifier.registry is not None and verifier.registry.knows("pump-01")
    assert aggregator.signs
    with pytest.raises(ConfigError, match="fleet"):
        service_security(service, fleet="other", signer=None)
    with pytest.raises(ConfigError, match="cannot read"):
        agent_security(
            AgentSecurity(signing_key=tmp_path / "missing.pem", aggregator_public_key=PUBLIC),
            device="pump-01",
        )


def test_signer_signs_frames_and_messages_by_topic() -> None:
    from fedge.codec import FrameHeader, encode_frame

    registry = KeyRegistry(KEY.verify_key, {"pump-01": KEY.verify_key})
    signer = Signer(KEY)
    frame = encode_frame(
        FrameHeader(kind="update", fleet="f", device="pump-01", round_id=1, base_version=0), {}
    )
    topic = "fedge/v1/f/rounds/1/updates/pump-01"
    assert verify_frame(signer.sign(topic, frame, now=0.0), topic, registry).signer == "pump-01"
    assert Signer().sign(topic, frame, now=0.0) == frame  # no key: unchanged


def test_status_stamps_rules() -> None:
    stamps = StatusStamps(max_age_s=300.0, max_future_s=30.0, capacity=2)
    stamps.check("a", 1000.0, online=True, now=1000.0)
    stamps.check("a", 1000.0, online=True, now=1001.0)  # the same retained status again
    with pytest.raises(SignatureError) as older:
        stamps.check("a", 999.0, online=True, now=1001.0)
    assert older.value.reason is RejectReason.STALE
    stamps.check("a", 1.0, online=False, now=1001.0)  # offline: whatever its age
    with pytest.raises(SignatureError) as ahead:
        stamps.check("a", 1032.0, online=True, now=1001.0)
    assert ahead.value.reason is RejectReason.CLOCK_SKEW
    with pytest.raises(SignatureError) as stale:
        stamps.check("b", 700.0, online=True, now=1001.0)  # 301 s old
    assert stale.value.reason is RejectReason.STALE
    stamps.check("b", 1001.0, online=True, now=1001.0)
    stamps.check("c", 1001.0, online=True, now=1001.0)
    assert stamps.newest("a") is None  # capacity 2: the least recently updated went


def test_holdout_score_margin() -> None:
    check_holdout_score(15.0, 10.0, margin=0.5)  # exactly 1.5x: still in
    with pytest.raises(RefusedError) as worse:
        check_holdout_score(15.01, 10.0, margin=0.5)
    assert worse.value.reason is RefusalReason.WORSE_ON_HOLDOUT
    with pytest.raises(RefusedError) as nan:
        check_holdout_score(math.nan, 10.0, margin=0.5)
    assert nan.value.reason is RefusalReason.NON_FINITE_OUTPUT
    check_holdout_score(1e9, math.nan, margin=0.0)  # nothing to compare with


def test_tally_logs_the_first_and_every_nth() -> None:
    tally = RejectionTally(first=2, every=5)
    logged = [tally.add("x") for _ in range(10)]
    assert logged == [True, True, False, False, True, False, False, False, False, True]
    assert tally.as_dict() == {"x": 10} and tally.total == 10
