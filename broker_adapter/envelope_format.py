"""Envelope format v1: wire constants, canonical msgpack, the bound contexts and the public types.

docs/envelope.md describes the outer and inner arrays, ``info``, ``aad`` and the signed bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import msgpack  # type: ignore[import-untyped]

from broker_adapter.envelope_errors import MalformedEnvelopeError, UnsupportedSuiteError
from broker_adapter.identity import is_identity_name
from broker_adapter.suites import (
    DEFAULT_SUITE_NAME,
    ENVELOPE_VERSION,
    SIGNATURE_LEN,
    SUITES,
    KemPrivateKey,
    SigningPublicKey,
    Suite,
)

# Domain-separation labels: nothing signed or sealed here passes for another protocol's.
SIG_LABEL = "AKMA-ENVELOPE-SIG"
INFO_LABEL = "AKMA-ENVELOPE-HPKE"
AEAD_LABEL = "AKMA-ENVELOPE-AEAD"

MSG_ID_LEN = 16
CORRELATION_ID_LEN = 16  # a correlation id is the msg_id of the request being answered
MAX_MSG_TYPE_LEN = 64
MAX_SUITE_NAME_LEN = 64
MAX_NAME_LEN = 253
# Unsigned 63-bit milliseconds fit every integer type on every side.
MAX_TIMESTAMP_MS = 2**63 - 1

OUTER_FIELDS = 5
EPOCH_OUTER_FIELDS = 7
AEAD_TAG_LEN = 16
INNER_FIELDS = 11

DEFAULT_MAX_ENVELOPE_BYTES = 256 * 1024
DEFAULT_WINDOW_MS = 5 * 60 * 1000
DEFAULT_SKEW_MS = 30 * 1000


@dataclass(frozen=True)
class EnvelopePolicy:
    """What this deployment accepts. The message never widens it."""

    allowed_suites: frozenset[str] = frozenset({DEFAULT_SUITE_NAME})
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    window_ms: int = DEFAULT_WINDOW_MS
    skew_ms: int = DEFAULT_SKEW_MS

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_suites", frozenset(self.allowed_suites))
        unknown = self.allowed_suites - SUITES.keys()
        if unknown:
            raise UnsupportedSuiteError(f"policy names unknown suites: {sorted(unknown)}")
        if not self.allowed_suites:
            raise UnsupportedSuiteError("policy allows no suite")
        if self.max_envelope_bytes <= 0 or self.window_ms <= 0 or self.skew_ms < 0:
            raise ValueError("policy limits must be positive")

    @property
    def replay_retention_ms(self) -> int:
        """How long a replay entry must live: the accepted timestamp span is this wide."""
        return self.window_ms + 2 * self.skew_ms


@dataclass(frozen=True)
class OpenedMessage:
    """A message that passed checks 1-7; what the replay guard and the handler need."""

    msg_type: str
    msg_id: bytes
    timestamp_ms: int
    sender: str
    recipient: str
    correlation_id: bytes | None
    body: bytes = field(repr=False)
    suite: str
    digest: bytes  # SHA-256 of the whole envelope as received, for the replay guard
    signer_kid: bytes
    recipient_kid: bytes


@dataclass(frozen=True)
class SealedEnvelope:
    """The bytes to publish plus the id the sender needs to match a response."""

    data: bytes
    msg_id: bytes
    timestamp_ms: int


class VerifiedSigner(NamedTuple):
    identity: str
    public_key: SigningPublicKey


class Keyring(Protocol):
    """What ``open_envelope`` needs from the local identity (``LocalIdentity`` fits)."""

    @property
    def name(self) -> str: ...

    def decryption_key(self, kid: bytes, suite: Suite) -> KemPrivateKey: ...


class SignerDirectory(Protocol):
    """What ``open_envelope`` needs from the trust store (``TrustStore`` fits)."""

    def signing_cert(self, kid: bytes, now_ms: int) -> VerifiedSigner: ...


def pack(obj: list[Any]) -> bytes:
    # msgpack-python always picks the shortest encoding and keeps array order: one value, one
    # encoding.
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack_array(data: bytes, *, max_items: int, max_bin: int) -> list[Any]:
    """Strictly decode one msgpack array of at most ``max_items`` scalars; raise Malformed."""
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max(MAX_NAME_LEN, MAX_SUITE_NAME_LEN, MAX_MSG_TYPE_LEN),
            max_bin_len=max_bin,
            max_array_len=max_items,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception:  # noqa: BLE001
        # Hostile input: every msgpack failure mode means "not our format".
        raise MalformedEnvelopeError("not a strict msgpack value") from None
    if type(value) is not list:
        raise MalformedEnvelopeError("not a msgpack array")
    return value


def require_canonical(data: bytes, fields: list[Any]) -> None:
    # One encoding per message: every changed bit changes meaning or is rejected here.
    if pack(fields) != data:
        raise MalformedEnvelopeError("non-canonical encoding")


def valid_msg_type(value: str) -> bool:
    return 0 < len(value) <= MAX_MSG_TYPE_LEN and value.isascii() and value.isprintable()


def is_int(value: object) -> bool:
    return type(value) is int


def is_bytes(value: object, length: int) -> bool:
    return type(value) is bytes and len(value) == length


def is_name(value: object) -> bool:
    return type(value) is str and is_identity_name(value)


def hpke_info(suite: str, sender: str, recipient: str, recipient_kid: bytes) -> bytes:
    return pack([INFO_LABEL, ENVELOPE_VERSION, suite, sender, recipient, recipient_kid])


def epoch_aad(suite: str, sender: str, recipient: str, recipient_kid: bytes) -> bytes:
    """AES-GCM associated data of an epoch envelope: the same context as ``hpke_info``."""
    return pack([AEAD_LABEL, ENVELOPE_VERSION, suite, sender, recipient, recipient_kid])


def signed_bytes(suite: str, fields: list[Any]) -> bytes:
    """The exact bytes the signature covers: label, suite, then inner fields 0..9."""
    return pack([SIG_LABEL, suite, *fields])


# The signed bytes and the inner message share the encoding of fields 0..9 (an array is a header
# plus its elements), so each is cut from the other; test_envelope_kat checks the result.
FIXARRAY_INNER = bytes([0x90 | INNER_FIELDS])
_FIXARRAY_SIGNED = bytes([0x90 | (INNER_FIELDS + 1)])
SIGNATURE_HEADER = b"\xc4" + bytes([SIGNATURE_LEN])  # bin8 of exactly 64 bytes
_SIGNED_PREFIX: dict[str, bytes] = {}


def signed_prefix(suite: str) -> bytes:
    prefix = _SIGNED_PREFIX.get(suite)
    if prefix is None:
        prefix = _FIXARRAY_SIGNED + pack([SIG_LABEL, suite])[1:]
        _SIGNED_PREFIX[suite] = prefix
    return prefix


def signed_from_inner(suite: str, inner: bytes) -> bytes:
    """``signed_bytes`` of a canonical inner message, cut out of its encoding."""
    return signed_prefix(suite) + inner[1 : -(len(SIGNATURE_HEADER) + SIGNATURE_LEN)]
