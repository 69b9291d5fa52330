"""Key material, the key registry and the security policy: every bad input is a ConfigError."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from fedge.errors import ConfigError, RejectReason, SignatureError
from fedge.signing import (
    Authenticator,
    KeyRegistry,
    SecurityPolicy,
    SigningKey,
    VerifyKey,
    sign_message,
)

SEED = bytes(range(32))
# RFC 8032 section 7.1, test 1: the public key of this seed, as the registry stores it.
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC_B64 = base64.b64encode(
    bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
).decode()


def _pem(private: Ed25519PrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password)
    )
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def test_pem_private_key_signs_like_its_seed() -> None:
    private = Ed25519PrivateKey.from_private_bytes(SEED)
    key = SigningKey.from_pem(_pem(private), signer="pump-03")
    assert key.sign(b"x") == SigningKey.from_seed(SEED, signer="pump-03").sign(b"x")
    encrypted = _pem(private, b"hunter2")
    assert SigningKey.from_pem(encrypted, signer="pump-03", password=b"hunter2").sign(b"x") == (
        key.sign(b"x")
    )
    assert "key" not in repr(key).replace("SigningKey", "")


@pytest.mark.parametrize(
    ("data", "password"),
    [
        (b"not a pem", None),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", None),
        (_pem(Ed25519PrivateKey.from_private_bytes(SEED), b"pw"), None),
        (_pem(Ed25519PrivateKey.from_private_bytes(SEED), b"pw"), b"wrong"),
        (_pem(Ed25519PrivateKey.from_private_bytes(SEED)), b"unexpected"),
    ],
    ids=["garbage", "bad-der", "encrypted-no-password", "wrong-password", "needless-password"],
)
def test_bad_private_pem_is_config_error(data: bytes, password: bytes | None) -> None:
    with pytest.raises(ConfigError):
        SigningKey.from_pem(data, signer="pump-03", password=password)


def test_non_ed25519_keys_are_refused() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ConfigError, match="expected Ed25519"):
        SigningKey.from_pem(pem, signer="pump-03")
    public_pem = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ConfigError, match="expected Ed25519"):
        VerifyKey.from_pem(public_pem)


def test_public_key_encodings() -> None:
    key = SigningKey.from_seed(RFC_SEED, signer="rfc").verify_key
    assert key.base64 == RFC_PUBLIC_B64
    pem = key.key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert VerifyKey.from_pem(pem).raw == key.raw
    assert VerifyKey.from_base64(RFC_PUBLIC_B64).raw == key.raw
    for bad in ["", "!!!!", base64.b64encode(bytes(31)).decode(), RFC_PUBLIC_B64[:-1]]:
        with pytest.raises(ConfigError):
            VerifyKey.from_base64(bad)
    with pytest.raises(ConfigError):
        VerifyKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


@pytest.mark.parametrize("signer", ["", "-x", "a/b", "a" * 65, "pump 3"])
def test_signer_ids_follow_the_identifier_rule(signer: str) -> None:
    with pytest.raises(ConfigError):
        SigningKey.from_seed(SEED, signer=signer)


def test_seed_length() -> None:
    with pytest.raises(ConfigError):
        SigningKey.from_seed(bytes(31), signer="x")


def _registry_json(**devices: str) -> bytes:
    return json.dumps({"aggregator": RFC_PUBLIC_B64, "devices": devices}).encode()


def test_registry_round_trip_and_lookup() -> None:
    device_key = SigningKey.from_seed(SEED, signer="pump-03").verify_key
    registry = KeyRegistry.from_json(_registry_json(**{"pump-03": device_key.base64}))
    assert registry.aggregator.base64 == RFC_PUBLIC_B64
    assert registry.for_device("pump-03").raw == device_key.raw
    assert registry.for_signer("aggregator").raw == registry.aggregator.raw
    assert registry.knows("pump-03")
    assert not registry.knows("ghost")
    with pytest.raises(SignatureError) as exc:
        registry.for_device("ghost")
    assert exc.value.reason is RejectReason.UNKNOWN_DEVICE
    assert KeyRegistry.from_json(registry.to_json()).to_json() == registry.to_json()
    with pytest.raises(TypeError):
        registry.devices["ghost"] = device_key  # type: ignore[index]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b'{"devices": {}}',
        b'{"aggregator": "AAAA", "devices": {}}',
        json.dumps({"aggregator": RFC_PUBLIC_B64, "devices": {"bad/id": RFC_PUBLIC_B64}}).encode(),
        json.dumps({"aggregator": RFC_PUBLIC_B64, "devices": {"x": "zz"}}).encode(),
        json.dumps({"aggregator": RFC_PUBLIC_B64, "extra": 1}).encode(),
        _registry_json(aggregator=RFC_PUBLIC_B64),
    ],
    ids=["empty", "list", "no-aggregator", "short", "bad-id", "bad-key", "extra", "reserved"],
)
def test_bad_registry_is_config_error(data: bytes) -> None:
    with pytest.raises(ConfigError):
        KeyRegistry.from_json(data)


def test_pinned_aggregator_key_must_match_the_registry() -> None:
    KeyRegistry.from_json(_registry_json(), pinned_aggregator=RFC_PUBLIC_B64)
    other = SigningKey.from_seed(SEED, signer="aggregator").verify_key.base64
    with pytest.raises(ConfigError, match="pinned"):
        KeyRegistry.from_json(_registry_json(), pinned_aggregator=other)


def test_policy_defaults_and_consistency() -> None:
    policy = SecurityPolicy()
    assert policy.mode == "off"
    assert policy.registry(None) is None
    assert policy.signing_key(None, signer="pump-03") is None
    assert policy.authenticator(None).mode == "off"
    guard = policy.replay_guard()
    assert (guard.max_age_s, guard.max_future_s, guard.capacity) == (300.0, 30.0, 100_000)
    with pytest.raises(ValidationError, match="needs registry_path or aggregator_key"):
        SecurityPolicy(mode="verify")
    with pytest.raises(ConfigError):
        SecurityPolicy(aggregator_key="not-a-key")
    with pytest.raises(ValidationError):
        SecurityPolicy(max_age_s=0.0)


def test_verify_policy_needs_keys_and_builds_a_verifier() -> None:
    pinned = SecurityPolicy(mode="verify", aggregator_key=RFC_PUBLIC_B64)
    registry = pinned.registry(None)
    assert registry is not None
    assert registry.aggregator.base64 == RFC_PUBLIC_B64
    assert dict(registry.devices) == {}
    with pytest.raises(ConfigError):
        pinned.signing_key(None, signer="pump-03")
    with pytest.raises(ConfigError):
        Authenticator("verify")
    aggregator = SigningKey.from_seed(RFC_SEED, signer="aggregator")
    topic = "fedge/v1/plant-7/rounds/current"
    envelope = sign_message(b"{}", aggregator, topic, now=1_700_000_000.0)
    verifier = pinned.authenticator(None)
    assert verifier.open_message(envelope, topic, now=1_700_000_000.0) == b"{}"
    from_file = SecurityPolicy(mode="verify", registry_path=Path("keys/registry.json"))
    with pytest.raises(ConfigError):
        from_file.registry(None)
    assert from_file.registry(_registry_json()) is not None
