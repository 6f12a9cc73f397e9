"""The AKMA message contract (akma_contract.messages)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from akma_contract.errors import InvalidBodyError, UnknownMessageTypeError
from akma_contract.messages import (
    MAX_BODY_LEN,
    MESSAGE_TYPES,
    REPLY_TYPES,
    AkmaAfKeyData,
    AkmaAfKeyRequest,
    AkmaKeyInfo,
    AkmaMessage,
    AnchorKeyRegistered,
    ContextRemovedNotification,
    ContextRemoveDone,
    CtxRemove,
    KeyNotFound,
    Rejected,
    decode_body,
)

KEY = bytes(range(32))
A_KID = "0." + "ab" * 32 + "@5gc.mnc001.mcc001.3gppnetwork.org"
AF_ID = b"af1.example.com\x01\x00\x00\x00\x07"

SAMPLES: list[AkmaMessage] = [
    AkmaKeyInfo(supi="imsi-001010000000001", a_kid=A_KID, k_akma=KEY),
    AkmaKeyInfo(supi="imsi-001010000000001", gpsi="msisdn-4915112345678", a_kid=A_KID, k_akma=KEY),
    AnchorKeyRegistered(a_kid=A_KID),
    AkmaAfKeyRequest(af_id=AF_ID, a_kid=A_KID),
    AkmaAfKeyRequest(af_id=AF_ID, a_kid=A_KID, anon_ind=True),
    AkmaAfKeyData(k_af=KEY, expiry_ms=1_700_000_000_000, supi="imsi-001010000000001"),
    AkmaAfKeyData(k_af=KEY, expiry_ms=1_700_000_000_000, gpsi="extid-alice@example.com"),
    AkmaAfKeyData(k_af=KEY, expiry_ms=0),
    KeyNotFound(),
    Rejected(reason="unauthorized"),
    Rejected(reason="rate_limited"),
    CtxRemove(supi="nai-alice@example.com"),
    ContextRemoveDone(),
    ContextRemovedNotification(a_kid=A_KID, reason="service_disabled"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.MSG_TYPE)
def test_round_trip(msg: AkmaMessage) -> None:
    body = msg.to_body()
    assert type(msg).from_body(body) == msg
    assert decode_body(msg.MSG_TYPE, body) == msg


def test_registry_covers_every_model_once() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())
    assert all(MESSAGE_TYPES[m.MSG_TYPE] is type(m) for m in SAMPLES)
    assert len({m.MSG_TYPE for m in MESSAGE_TYPES.values()}) == len(MESSAGE_TYPES)
    with pytest.raises(TypeError):
        MESSAGE_TYPES["x"] = KeyNotFound  # type: ignore[index]
    for req, replies in REPLY_TYPES.items():
        assert req in MESSAGE_TYPES and replies <= set(MESSAGE_TYPES)


def test_wire_form_uses_bin_for_bytes_and_omits_absent_fields() -> None:
    body = AkmaAfKeyData(k_af=KEY, expiry_ms=5).to_body()
    raw = msgpack.unpackb(body, raw=True)
    assert raw == {b"k_af": KEY, b"expiry_ms": 5}
    assert KeyNotFound().to_body() == b"\x80"


def test_frozen_and_extra_forbidden() -> None:
    msg = CtxRemove(supi="imsi-00101")
    with pytest.raises(ValidationError):
        msg.supi = "imsi-00102"
    with pytest.raises(ValidationError):
        CtxRemove(supi="imsi-00101", extra=1)  # type: ignore[call-arg]
    body = msgpack.packb({"supi": "imsi-00101", "extra": 1})
    with pytest.raises(InvalidBodyError):
        CtxRemove.from_body(body)


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (AkmaKeyInfo, {"supi": "imsi-00101", "a_kid": A_KID, "k_akma": KEY[:31]}),
        (AkmaKeyInfo, {"supi": "imsi-00101", "a_kid": A_KID, "k_akma": KEY.hex()}),  # hex, not bin
        (AkmaKeyInfo, {"supi": "00101", "a_kid": A_KID, "k_akma": KEY}),  # untyped SUPI
        (AkmaKeyInfo, {"supi": "imsi-00101", "gpsi": "555", "a_kid": A_KID, "k_akma": KEY}),
        (AkmaKeyInfo, {"gpsi": "msisdn-12345", "a_kid": A_KID, "k_akma": KEY}),  # no SUPI
        (AkmaAfKeyRequest, {"af_id": AF_ID, "a_kid": "no-at-sign"}),
        (AkmaAfKeyRequest, {"af_id": AF_ID, "a_kid": A_KID, "anon_ind": 1}),  # no coercion
        (AkmaAfKeyRequest, {"af_id": b"short", "a_kid": A_KID}),
        (AkmaAfKeyRequest, {"af_id": AF_ID.decode("latin-1"), "a_kid": A_KID}),
        (AkmaAfKeyData, {"k_af": KEY, "expiry_ms": -1}),
        (AkmaAfKeyData, {"k_af": KEY, "expiry_ms": "5"}),
        (AkmaAfKeyData, {"k_af": KEY, "expiry_ms": 1.5}),
        (AkmaAfKeyData, {"k_af": KEY, "expiry_ms": 2**64 - 1}),  # valid msgpack, out of range
        (Rejected, {"reason": "bad_signature"}),
        (ContextRemovedNotification, {"a_kid": A_KID, "reason": "gone"}),
        (CtxRemove, {}),
    ],
)
def test_invalid_bodies_refused(model: type[AkmaMessage], fields: dict[str, Any]) -> None:
    body = msgpack.packb(fields, use_bin_type=True)
    with pytest.raises(InvalidBodyError) as info:
        model.from_body(body)
    assert info.value.code == "invalid_body"


def test_error_detail_never_quotes_values() -> None:
    secret = bytes([0xA5]) * 31  # one octet short, so validation fails on the key field itself
    body = msgpack.packb({"k_af": secret, "expiry_ms": "x"}, use_bin_type=True)
    with pytest.raises(InvalidBodyError) as info:
        AkmaAfKeyData.from_body(body)
    text = str(info.value)
    assert "k_af" in text
    for leak in (secret.hex(), repr(secret), "\\xa5", "a5a5"):
        assert leak not in text


def test_repr_hides_keys() -> None:
    shown = repr(AkmaKeyInfo(supi="imsi-00101", a_kid=A_KID, k_akma=KEY)) + repr(
        AkmaAfKeyData(k_af=KEY, expiry_ms=1)
    )
    assert KEY.hex() not in shown and repr(KEY) not in shown and "k_af" not in shown


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",
        b"\x81",
        b"\x91\x01",
        b"\xa3abc",
        msgpack.packb({1: 2}),
        b"\x81\xa4supi\xc7\x01\x05x",
        msgpack.packb({"supi": b"imsi-00101"}),
        b"\x81\xa4supi\xa3\xff\xfe\xfd",
        b"\x80" * 2,
        b"\x80" + b"\x00" * MAX_BODY_LEN,
    ],
)
def test_garbage_is_invalid_body(body: bytes) -> None:
    with pytest.raises(InvalidBodyError):
        CtxRemove.from_body(body)


def test_unknown_message_type() -> None:
    with pytest.raises(UnknownMessageTypeError) as info:
        decode_body("akma.nope", KeyNotFound().to_body())
    assert info.value.code == "unknown_message_type"
    with pytest.raises(UnknownMessageTypeError):
        decode_body(None, b"\x80")  # type: ignore[arg-type]


def test_body_must_be_bytes() -> None:
    with pytest.raises(InvalidBodyError):
        KeyNotFound.from_body(bytearray(b"\x80"))  # type: ignore[arg-type]


@given(st.sampled_from(sorted(MESSAGE_TYPES)), st.binary(max_size=200))
def test_any_bytes_decode_or_raise_invalid_body(msg_type: str, body: bytes) -> None:
    try:
        decoded = decode_body(msg_type, body)
    except InvalidBodyError:
        return
    assert isinstance(decoded, MESSAGE_TYPES[msg_type])


_json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.dictionaries(
        st.sampled_from(
            [
                "supi",
                "gpsi",
                "a_kid",
                "k_akma",
                "af_id",
                "anon_ind",
                "k_af",
                "expiry_ms",
                "reason",
                "x",
            ]
        ),
        _json_like,
        max_size=5,
    ),
)
def test_structured_garbage_decodes_or_raises_invalid_body(
    msg_type: str, obj: dict[str, Any]
) -> None:
    with contextlib.suppress(InvalidBodyError):
        decode_body(msg_type, msgpack.packb(obj, use_bin_type=True))


def test_contract_imports_no_side_and_no_io() -> None:
    """Both sides import the contract; it must drag in neither side nor any I/O shell."""
    code = (
        "import sys, akma_contract.messages, akma_contract.topology; "
        "print(','.join(sorted(m for m in sys.modules if m.startswith(('akma_contract', "
        "'network_side', 'as_side', 'aio_pika', 'broker_adapter', 'sqlite3')))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: S603 - argv is sys.executable with fixed arguments
    assert out.stdout.strip().split(",") == [
        "akma_contract",
        "akma_contract.errors",
        "akma_contract.identifiers",
        "akma_contract.messages",
        "akma_contract.topology",
    ]
