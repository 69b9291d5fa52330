"""Signed frames and messages: the exact bytes signed, pinned signatures, every rejection."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedge.codec import FrameHeader, decode_frame, encode_frame
from fedge.errors import RejectReason, SignatureError, UpdateRejectedError
from fedge.messages import DeviceStatus, decode_message
from fedge.signing import (
    FRAME_CONTEXT,
    MESSAGE_CONTEXT,
    Authenticator,
    KeyRegistry,
    ReplayGuard,
    SigningKey,
    frame_signature,
    frame_signing_bytes,
    message_signing_bytes,
    sign_frame,
    sign_message,
    verify_frame,
    verify_message,
)
from fedge.topics import Topics, parse_topic
from fedge.validation import RoundExpectation, UpdateValidator

DEVICE = SigningKey.from_seed(bytes(range(32)), signer="pump-03")
OTHER = SigningKey.from_seed(bytes(range(1, 33)), signer="pump-04")
AGGREGATOR = SigningKey.from_seed(bytes(range(100, 132)), signer="aggregator")
GHOST = SigningKey.from_seed(bytes(range(200, 232)), signer="ghost")
REGISTRY = KeyRegistry(
    AGGREGATOR.verify_key, {"pump-03": DEVICE.verify_key, "pump-04": OTHER.verify_key}
)
T = Topics("plant-7")
STATUS_TOPIC = "fedge/v1/plant-7/devices/pump-03/status"
UPDATE_TOPIC = "fedge/v1/plant-7/rounds/12/updates/pump-03"
NONCE = "0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000.5

STATUS = b'{"fleet":"plant-7","device":"pump-03","state":"online","ts":1700000000.0}'
# 1700000000.5 = 0x6553F100.8 = 0x1.954fc402p+30: exponent 1023+30 = 0x41d.
TS_BYTES = bytes.fromhex("41d954fc40200000")
MESSAGE_SIG = (
    "f19b87a8dee45bfa0c498de4aeb694309e831aab5e96d1af1098c2cc955802f0"
    "8f235135a97f37562d48f94ec032a594fbb02c1e90ac6a7128c6ffe0f1c55e04"
)
ENVELOPE = (
    b'{"payload":"{\\"fleet\\":\\"plant-7\\",\\"device\\":\\"pump-03\\",\\"state\\":\\"online\\",'
    b'\\"ts\\":1700000000.0}","signer":"pump-03","nonce":"0123456789abcdef0123456789abcdef",'
    b'"ts":1700000000.5,"sig":"8ZuHqN7kW/oMSY3krraUMJ6DGqteltGvEJjCzJVYAvCPI1E1qX83Vi1I+U7AMqW'
    b'U+7AsHpCsanEoxv/g8cVeBA=="}'
)

HEADER = (
    b'{"kind":"update","fleet":"plant-7","device":"pump-03","round_id":12,"base_version":3,'
    b'"num_examples":10,"metrics":{},"codec":"safetensors","created_at":1700000000.0}'
)
# safetensors of {"w": float32 [1, -2]}: u64 LE header length, JSON padded to 8, data.
BODY = (
    b'8\x00\x00\x00\x00\x00\x00\x00{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}  '
    b"\x00\x00\x80?\x00\x00\x00\xc0"
)
FRAME = b"FEDG\x01\x00" + struct.pack(">I", len(HEADER)) + HEADER + BODY
# The signer pads the unsigned header so that the signed one keeps the body 8-byte
# aligned: 10 + (164 + 3 - 1 + len(',"signature":"ed25519:pump-03:') + 88 + 2) = 296.
PADDED_HEADER = HEADER[:-1] + b"   }"
FRAME_SIG_B64 = (
    "vyINeF3v3zV6NL+5N+Ddu4vcAw1WwduCUtcAxaUlXeEKQKxxVvRrVkdOfHkhf5FHxaveTKkaHDo7T2FPeEg9Aw=="
)


def _reason(exc: pytest.ExceptionInfo[SignatureError]) -> RejectReason:
    return exc.value.reason


def _signed_status() -> bytes:
    return sign_message(STATUS, DEVICE, STATUS_TOPIC, now=NOW, nonce=NONCE)


# -- the primitive and the exact bytes ------------------------------------------------


def test_ed25519_primitive_matches_rfc8032_test_1() -> None:
    key = SigningKey.from_seed(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
        signer="rfc",
    )
    assert key.verify_key.raw.hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert key.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
        "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_message_signing_bytes_layout() -> None:
    expected = (
        b"fedge-v1\x00message\x00"
        b"fedge/v1/plant-7/devices/pump-03/status\x00"
        b"pump-03\x00"
        b"0123456789abcdef0123456789abcdef\x00" + TS_BYTES + STATUS
    )
    assert message_signing_bytes(STATUS_TOPIC, "pump-03", NONCE, NOW, STATUS) == expected
    assert expected.startswith(MESSAGE_CONTEXT)
    # Pinned (Ed25519 is deterministic) and checked with the bare library key.
    signature = bytes.fromhex(MESSAGE_SIG)
    assert DEVICE.sign(expected) == signature
    Ed25519PublicKey.from_public_bytes(DEVICE.verify_key.raw).verify(signature, expected)


def test_envelope_exact_bytes() -> None:
    envelope = _signed_status()
    assert envelope == ENVELOPE
    parsed = json.loads(envelope)
    assert list(parsed) == ["payload", "signer", "nonce", "ts", "sig"]
    assert parsed["payload"].encode() == STATUS
    assert base64.b64decode(parsed["sig"]).hex() == MESSAGE_SIG


def test_frame_signing_bytes_layout_and_signed_frame() -> None:
    expected = (
        b"fedge-v1\x00frame\x00"
        b"fedge/v1/plant-7/rounds/12/updates/pump-03\x00"
        b"pump-03\x00"
        b"FEDG\x01\x00" + struct.pack(">I", len(HEADER)) + HEADER + hashlib.sha256(BODY).digest()
    )
    got = frame_signing_bytes(
        UPDATE_TOPIC, "pump-03", version=1, flags=0, unsigned_header=HEADER, body=BODY
    )
    assert got == expected
    assert expected.startswith(FRAME_CONTEXT)
    signed = sign_frame(FRAME, DEVICE, UPDATE_TOPIC)
    assert len(HEADER) == 164
    signed_header = (
        PADDED_HEADER[:-1] + b',"signature":"ed25519:pump-03:' + FRAME_SIG_B64.encode() + b'"}'
    )
    assert len(signed_header) - len(PADDED_HEADER) == len(',"signature":"ed25519:pump-03:') + 88 + 1
    assert len(signed_header) == 286 and (10 + 286) % 8 == 0  # the body stays 8-byte aligned
    assert signed == b"FEDG\x01\x00" + struct.pack(">I", len(signed_header)) + signed_header + BODY
    # What was signed is the padded unsigned header, as the verifier rebuilds it.
    assert frame_signature(signed).unsigned_header == PADDED_HEADER
    padded = frame_signing_bytes(
        UPDATE_TOPIC, "pump-03", version=1, flags=0, unsigned_header=PADDED_HEADER, body=BODY
    )
    Ed25519PublicKey.from_public_bytes(DEVICE.verify_key.raw).verify(
        base64.b64decode(FRAME_SIG_B64), padded
    )


def test_signing_an_encoded_frame_keeps_its_tensors_aligned() -> None:
    header = FrameHeader(kind="update", fleet="plant-7", device="pump-03", round_id=12,
                         base_version=3, num_examples=10, metrics={"train_loss": 0.25})
    frame = encode_frame(header, {"w": np.array([1.0, -2.0, 3.0], np.float32)})
    for signer_name in ("pump-03", "a", "device-with-a-longer-name"):
        key = SigningKey.from_seed(bytes(32), signer=signer_name)
        signed = sign_frame(frame, key, UPDATE_TOPIC)
        assert (10 + int.from_bytes(signed[6:10], "big")) % 8 == 0
        decoded = decode_frame(signed, copy=False)
        assert decoded.tensors["w"].flags.aligned
        np.testing.assert_array_equal(decoded.tensors["w"], [1.0, -2.0, 3.0])


def test_signed_frame_still_decodes_with_the_carrier_in_the_header() -> None:
    frame = decode_frame(sign_frame(FRAME, DEVICE, UPDATE_TOPIC))
    assert frame.header.round_id == 12
    assert frame.header.signature == f"ed25519:pump-03:{FRAME_SIG_B64}"
    np.testing.assert_array_equal(frame.tensors["w"], np.array([1.0, -2.0], dtype=np.float32))


# -- acceptance ----------------------------------------------------------------------


def test_verify_message_returns_the_exact_payload() -> None:
    got = verify_message(ENVELOPE, STATUS_TOPIC, REGISTRY, now=NOW, guard=ReplayGuard())
    assert (got.payload, got.signer, got.nonce, got.ts) == (STATUS, "pump-03", NONCE, NOW)
    assert decode_message(DeviceStatus, got.payload).state == "online"


def test_verify_frame_and_aggregator_topics() -> None:
    assert verify_frame(sign_frame(FRAME, DEVICE, UPDATE_TOPIC), UPDATE_TOPIC, REGISTRY).signer == (
        "pump-03"
    )
    model = encode_frame(
        FrameHeader(kind="global", fleet="plant-7", round_id=4, base_version=4, version=5), {}
    )
    signed = sign_frame(model, AGGREGATOR, T.global_model)
    assert verify_frame(signed, T.global_model, REGISTRY).signer == "aggregator"
    announcement = sign_message(b"{}", AGGREGATOR, T.round_current, now=NOW)
    assert verify_message(announcement, T.round_current, REGISTRY, now=NOW).payload == b"{}"


def test_non_ascii_payload_round_trips_byte_for_byte() -> None:
    payload = '{"agent_version":"π-\u2028-\\"q\\"-\\u0000"}'.encode()
    envelope = sign_message(payload, DEVICE, STATUS_TOPIC, now=NOW)
    assert verify_message(envelope, STATUS_TOPIC, REGISTRY, now=NOW).payload == payload


# -- rejections ----------------------------------------------------------------------


def _tamper_envelope(**fields: object) -> bytes:
    obj = json.loads(ENVELOPE)
    obj.update(fields)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "data",
    [
        _tamper_envelope(payload=STATUS.decode().replace("online", "offline")),
        _tamper_envelope(nonce="1" + NONCE[1:]),
        _tamper_envelope(ts=NOW + 1),
        _tamper_envelope(sig="A" + json.loads(ENVELOPE)["sig"][1:]),
    ],
    ids=["payload", "nonce", "ts", "sig"],
)
def test_tampered_message_is_bad_signature(data: bytes) -> None:
    with pytest.raises(SignatureError) as exc:
        verify_message(data, STATUS_TOPIC, REGISTRY, now=NOW)
    assert _reason(exc) is RejectReason.BAD_SIGNATURE


def test_message_moved_to_another_topic_of_the_same_device_is_bad_signature() -> None:
    with pytest.raises(SignatureError) as exc:
        verify_message(ENVELOPE, T.telemetry("pump-03"), REGISTRY, now=NOW)
    assert _reason(exc) is RejectReason.BAD_SIGNATURE


def test_status_replayed_as_another_devices_is_refused() -> None:
    # The expected signer follows the topic: pump-04's status must be signed by pump-04.
    with pytest.raises(SignatureError) as exc:
        verify_message(ENVELOPE, T.status("pump-04"), REGISTRY, now=NOW)
    assert _reason(exc) is RejectReason.WRONG_SIGNER
    # Relabelling the signer does not help: pump-04's key does not verify it.
    with pytest.raises(SignatureError) as exc:
        verify_message(_tamper_envelope(signer="pump-04"), T.status("pump-04"), REGISTRY, now=NOW)
    assert _reason(exc) is RejectReason.BAD_SIGNATURE


def test_wrong_signer_and_forged_signer_field() -> None:
    by_other = sign_message(STATUS, OTHER, STATUS_TOPIC, now=NOW)
    with pytest.raises(SignatureError) as exc:
        verify_message(by_other, STATUS_TOPIC, REGISTRY, now=NOW)
    assert _reason(exc) is RejectReason.WRONG_SIGNER
    forged = json.loads(by_other)
    forged["signer"] = "pump-03"
    with pytest.raises(SignatureError) as exc:
        verify_message(json.dumps(forged).encode(), STATUS_TOPIC, REGISTRY, now=NOW)
    assert _reason(exc) is RejectReason.BAD_SIGNATURE


def test_device_cannot_sign_aggregator_topics() -> None:
    announcement = sign_message(b"{}", DEVICE, T.round_current, now=NOW)
    with pytest.raises(SignatureError) as exc:
        verify_message(announcement, T.round_current, REGISTRY, now=NOW)
    assert _reason(exc) is RejectReason.WRONG_SIGNER
    impostor = SigningKey(signer="aggregator", key=DEVICE.key)
    model = sign_frame(FRAME, impostor, T.global_model)
    with pytest.raises(SignatureError) as exc:
        verify_frame(model, T.global_model, REGISTRY)
    assert _reason(exc) is RejectReason.BAD_SIGNATURE


def test_unknown_device_fake_online_status() -> None:
    topic = T.status("ghost")
    fake = sign_message(STATUS.replace(b"pump-03", b"ghost"), GHOST, topic, now=NOW)
    with pytest.raises(SignatureError) as exc:
        verify_message(fake, topic, REGISTRY, now=NOW)
    assert _reason(exc) is RejectReason.UNKNOWN_DEVICE
    frame = sign_frame(FRAME, GHOST, T.update(12, "ghost"))
    with pytest.raises(SignatureError) as exc:
        verify_frame(frame, T.update(12, "ghost"), REGISTRY)
    assert _reason(exc) is RejectReason.UNKNOWN_DEVICE


def test_device_topic_named_aggregator_is_unknown_device() -> None:
    topic = T.status("aggregator")
    with pytest.raises(SignatureError) as exc:
        verify_message(sign_message(b"{}", AGGREGATOR, topic, now=NOW), topic, REGISTRY, now=NOW)
    assert _reason(exc) is RejectReason.UNKNOWN_DEVICE


def test_unsigned_in_verify_mode_passes_in_off_mode() -> None:
    strict = Authenticator("verify", REGISTRY)
    with pytest.raises(SignatureError) as exc:
        strict.open_message(STATUS, STATUS_TOPIC, now=NOW)
    assert _reason(exc) is RejectReason.UNSIGNED
    with pytest.raises(SignatureError) as exc:
        strict.check_frame(FRAME, UPDATE_TOPIC)
    assert _reason(exc) is RejectReason.UNSIGNED
    demo = Authenticator("off")
    assert demo.open_message(STATUS, STATUS_TOPIC, now=NOW) == STATUS
    assert demo.open_message(ENVELOPE, STATUS_TOPIC, now=NOW) == STATUS
    demo.check_frame(FRAME, UPDATE_TOPIC)
    assert strict.open_message(ENVELOPE, STATUS_TOPIC, now=NOW) == STATUS


def test_replay_too_old_and_too_new() -> None:
    guard = ReplayGuard(max_age_s=300.0, max_future_s=30.0)
    verify_message(ENVELOPE, STATUS_TOPIC, REGISTRY, now=NOW, guard=guard)
    cases = [
        (NOW + 1.0, RejectReason.REPLAY),
        (NOW + 300.5, RejectReason.STALE),  # 300.5 s after signing, window 300 s
        (NOW - 30.5, RejectReason.CLOCK_SKEW),  # receiver's clock 30.5 s behind
    ]
    for now, reason in cases:
        with pytest.raises(SignatureError) as exc:
            verify_message(ENVELOPE, STATUS_TOPIC, REGISTRY, now=now, guard=guard)
        assert _reason(exc) is reason


def test_tampered_frames_are_bad_signature() -> None:
    signed = sign_frame(FRAME, DEVICE, UPDATE_TOPIC)
    header_at = signed.index(b'"round_id":12')
    body_at = len(signed) - 1
    cases = {
        "header": signed.replace(b'"round_id":12', b'"round_id":13'),
        "base": signed.replace(b'"base_version":3', b'"base_version":4'),
        "body": signed[:body_at] + bytes([signed[body_at] ^ 1]),
        "flags": signed[:5] + b"\x01" + signed[6:],
        "sig": signed.replace(b":vyINeF", b":AyINeF"),
    }
    assert header_at > 10
    for name, frame in cases.items():
        with pytest.raises(SignatureError) as exc:
            verify_frame(frame, UPDATE_TOPIC, REGISTRY)
        assert _reason(exc) is RejectReason.BAD_SIGNATURE, name


def test_update_replayed_into_another_round() -> None:
    signed = sign_frame(FRAME, DEVICE, UPDATE_TOPIC)
    with pytest.raises(SignatureError) as exc:
        verify_frame(signed, T.update(13, "pump-03"), REGISTRY)
    assert _reason(exc) is RejectReason.BAD_SIGNATURE
    with pytest.raises(SignatureError) as exc:
        verify_frame(signed, T.update(12, "pump-04"), REGISTRY)
    assert _reason(exc) is RejectReason.WRONG_SIGNER
    # On its own topic the signature holds, and the signed round id is what the
    # validator then checks against the open round.
    verify_frame(signed, UPDATE_TOPIC, REGISTRY)
    expect = RoundExpectation(round_id=13, base_version=3, task="train")
    with pytest.raises(UpdateRejectedError) as rejected:
        UpdateValidator("plant-7").check(parse_topic(UPDATE_TOPIC), decode_frame(signed), expect)
    assert rejected.value.reason is RejectReason.WRONG_ROUND


def test_broken_carriers_are_malformed_or_too_large() -> None:
    signed = sign_frame(FRAME, DEVICE, UPDATE_TOPIC)
    non_canonical = signed.replace(b'Aw=="}', b'Ax=="}')  # a padding bit set
    cases: list[tuple[bytes, RejectReason]] = [
        (non_canonical, RejectReason.MALFORMED),
        (signed[:9], RejectReason.MALFORMED),
        (b"FEDH" + signed[4:], RejectReason.MALFORMED),
        (signed[:6] + struct.pack(">I", 1 << 20) + signed[10:], RejectReason.MALFORMED),
        (signed + bytes(64), RejectReason.TOO_LARGE),
    ]
    for frame, reason in cases:
        with pytest.raises(SignatureError) as exc:
            verify_frame(frame, UPDATE_TOPIC, REGISTRY, max_bytes=len(signed))
        assert _reason(exc) is reason
    sig = json.loads(ENVELOPE)["sig"]
    for data, reason in [
        (_tamper_envelope(sig=sig[:-3] + "B=="), RejectReason.MALFORMED),
        (_tamper_envelope(nonce="XYZ"), RejectReason.MALFORMED),
        (_tamper_envelope(extra=1), RejectReason.MALFORMED),
        (_tamper_envelope(payload="\ud800"), RejectReason.MALFORMED),
        (ENVELOPE + b" " * 1024, RejectReason.TOO_LARGE),
    ]:
        with pytest.raises(SignatureError) as exc:
            verify_message(data, STATUS_TOPIC, REGISTRY, now=NOW, max_bytes=len(ENVELOPE) + 64)
        assert _reason(exc) is reason


# -- fuzzing: 10,000 deterministic mutations plus hypothesis --------------------------


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        at = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf.insert(at, rng.randrange(256))
        elif op == 2 and buf:
            del buf[at]
        else:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(buf)


def test_ten_thousand_mutations_raise_only_typed_errors() -> None:
    rng = random.Random(11)
    signed_frame = sign_frame(FRAME, DEVICE, UPDATE_TOPIC)
    original = (STATUS, "pump-03", NONCE, NOW)
    accepted_messages = 0
    for _ in range(5_000):
        frame = _mutate(signed_frame, rng)
        if frame != signed_frame:
            # Every byte of a frame is signed or rebuilt from the signed part: no mutation
            # may verify.
            with pytest.raises(SignatureError):
                verify_frame(frame, UPDATE_TOPIC, REGISTRY)
        envelope = _mutate(ENVELOPE, rng)
        try:
            got = verify_message(envelope, STATUS_TOPIC, REGISTRY, now=NOW)
        except SignatureError:
            continue
        # JSON whitespace or escapes may change without touching what is signed: what
        # verifies must be exactly what was signed.
        assert (got.payload, got.signer, got.nonce, got.ts) == original
        accepted_messages += 1
    assert accepted_messages < 500


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_signature_errors(data: bytes) -> None:
    for check in (
        lambda: verify_frame(data, UPDATE_TOPIC, REGISTRY),
        lambda: verify_frame(b"FEDG\x01\x00" + data, UPDATE_TOPIC, REGISTRY),
        lambda: verify_message(data, STATUS_TOPIC, REGISTRY, now=NOW),
    ):
        with pytest.raises(SignatureError):
            check()


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(), st.lists, max_leaves=20))
def test_json_shaped_garbage_is_unsigned_or_malformed(value: object) -> None:
    for doc in (value, {"sig": value}, {"payload": value, "sig": value}):
        try:
            data = json.dumps(doc).encode()
        except ValueError:
            continue
        with pytest.raises(SignatureError) as exc:
            verify_message(data, STATUS_TOPIC, REGISTRY, now=NOW)
        assert _reason(exc) in {RejectReason.UNSIGNED, RejectReason.MALFORMED}


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=946_684_800.0, max_value=4_102_444_800.0), st.binary(max_size=64))
def test_any_timestamp_and_payload_round_trip(now: float, raw: bytes) -> None:
    payload = json.dumps({"x": raw.decode("latin-1")}, ensure_ascii=False).encode()
    envelope = sign_message(payload, DEVICE, STATUS_TOPIC, now=now)
    got = verify_message(envelope, STATUS_TOPIC, REGISTRY, now=now)
    assert got.payload == payload
    assert got.ts == now
