"""Envelope format v1: a signed inner message inside HPKE, inside a small msgpack outer array.

Wire format (docs/envelope.md has the full description)::

    outer = [version, suite, sender, recipient_kid, enc||ciphertext]
    inner = [version, msg_type, msg_id, timestamp_ms, sender, recipient, recipient_kid,
             correlation_id, body, signer_kid, signature]
    signature = Sign(signer key, msgpack([SIG_LABEL, suite, *inner[:10]]))
    info      = msgpack([INFO_LABEL, version, suite, sender, recipient, recipient_kid])

Everything is pure: the clock and the randomness are passed in by the caller, and the key
material comes from injected objects. ``open_envelope`` runs the checks in the order of the
security design (cheap first) and raises an ``EnvelopeError`` subclass on any failure; it never
returns a "not valid" value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import msgpack  # type: ignore[import-untyped]

from broker_adapter.envelope_errors import (
    CorrelationMismatchError,
    EnvelopeError,
    EnvelopeTooLargeError,
    FromFutureError,
    IdentityMismatchError,
    InvalidSealInputError,
    MalformedEnvelopeError,
    StaleMessageError,
    UnsupportedSuiteError,
    UnsupportedVersionError,
)
from broker_adapter.identity import KID_LEN, LocalIdentity, RecipientKey, is_identity_name
from broker_adapter.suites import (
    DEFAULT_SUITE_NAME,
    ENVELOPE_VERSION,
    SIGNATURE_LEN,
    SUITES,
    KemPrivateKey,
    SigningPublicKey,
    Suite,
    get_suite,
)

# Domain-separation labels: a signature or an HPKE context made for this protocol can never be
# mistaken for one made for another protocol that happens to use the same keys.
SIG_LABEL = "AKMA-ENVELOPE-SIG"
INFO_LABEL = "AKMA-ENVELOPE-HPKE"

MSG_ID_LEN = 16
CORRELATION_ID_LEN = 16  # a correlation id is the msg_id of the request being answered
MAX_MSG_TYPE_LEN = 64
MAX_SUITE_NAME_LEN = 64
MAX_NAME_LEN = 253
# Timestamps are unsigned 63-bit milliseconds, so they fit every integer type on every side.
MAX_TIMESTAMP_MS = 2**63 - 1

OUTER_FIELDS = 5
INNER_FIELDS = 11

DEFAULT_MAX_ENVELOPE_BYTES = 256 * 1024
DEFAULT_WINDOW_MS = 5 * 60 * 1000
DEFAULT_SKEW_MS = 30 * 1000


def _valid_msg_type(value: str) -> bool:
    return 0 < len(value) <= MAX_MSG_TYPE_LEN and value.isascii() and value.isprintable()


# ---- policy and results ---------------------------------------------------------------------


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


# ---- canonical encoding -------------------------------------------------------------------------


def _pack(obj: list[Any]) -> bytes:
    # msgpack-python always chooses the shortest encoding for ints, strings and byte strings,
    # and arrays keep their order, so packing the same values always gives the same bytes.
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def _unpack_array(data: bytes, *, max_items: int, max_bin: int) -> list[Any]:
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
        # The input is hostile; msgpack signals its many failure modes with ValueError,
        # TypeError, OverflowError and its own classes. All of them mean "not our format".
        raise MalformedEnvelopeError("not a strict msgpack value") from None
    if type(value) is not list:
        raise MalformedEnvelopeError("not a msgpack array")
    return value


def _require_canonical(data: bytes, fields: list[Any]) -> None:
    # Requiring the one canonical encoding means that no two byte strings carry the same
    # decoded message: every changed bit changes meaning or is rejected here.
    if _pack(fields) != data:
        raise MalformedEnvelopeError("non-canonical encoding")


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_bytes(value: object, length: int) -> bool:
    return type(value) is bytes and len(value) == length


def _is_name(value: object) -> bool:
    return type(value) is str and is_identity_name(value)


def hpke_info(suite: str, sender: str, recipient: str, recipient_kid: bytes) -> bytes:
    return _pack([INFO_LABEL, ENVELOPE_VERSION, suite, sender, recipient, recipient_kid])


def signed_bytes(suite: str, fields: list[Any]) -> bytes:
    """The exact bytes the signature covers: label, suite, then inner fields 0..9."""
    return _pack([SIG_LABEL, suite, *fields])


# ---- sealing --------------------------------------------------------------------------------------


def build_signed_inner(
    *,
    suite: Suite,
    identity: LocalIdentity,
    recipient: RecipientKey,
    msg_type: str,
    body: bytes,
    correlation_id: bytes | None,
    clock: Callable[[], int],
    rng: Callable[[int], bytes],
) -> tuple[bytes, bytes, int]:
    """Return ``(inner bytes, msg_id, timestamp)``; deterministic for a fixed clock and rng."""
    if not _valid_msg_type(msg_type):
        raise InvalidSealInputError("message type must be 1-64 printable ASCII characters")
    if type(body) is not bytes:
        raise InvalidSealInputError("body must be bytes")
    if correlation_id is not None and not _is_bytes(correlation_id, CORRELATION_ID_LEN):
        raise InvalidSealInputError("correlation id must be 16 bytes (the request's msg_id)")
    if not is_identity_name(recipient.name) or len(recipient.kid) != KID_LEN:
        raise InvalidSealInputError("recipient name or key id is invalid")
    msg_id = rng(MSG_ID_LEN)
    if not _is_bytes(msg_id, MSG_ID_LEN):
        raise InvalidSealInputError("rng must return the number of bytes asked for")
    timestamp = clock()
    if not _is_int(timestamp) or not 0 <= timestamp <= MAX_TIMESTAMP_MS:
        raise InvalidSealInputError("clock must return non-negative integer milliseconds")
    fields: list[Any] = [
        ENVELOPE_VERSION,
        msg_type,
        msg_id,
        timestamp,
        identity.name,
        recipient.name,
        recipient.kid,
        correlation_id,
        body,
        identity.signing_kid,
    ]
    signature = suite.sign(identity.signing_key, signed_bytes(suite.name, fields))
    return _pack([*fields, signature]), msg_id, timestamp


def seal_envelope(
    *,
    suite: Suite | str = DEFAULT_SUITE_NAME,
    identity: LocalIdentity,
    recipient: RecipientKey,
    msg_type: str,
    body: bytes,
    correlation_id: bytes | None = None,
    clock: Callable[[], int],
    rng: Callable[[int], bytes],
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
) -> SealedEnvelope:
    """Sign, then encrypt to ``recipient``; return the envelope bytes and its message id."""
    chosen = get_suite(suite) if isinstance(suite, str) else suite
    inner, msg_id, timestamp = build_signed_inner(
        suite=chosen,
        identity=identity,
        recipient=recipient,
        msg_type=msg_type,
        body=body,
        correlation_id=correlation_id,
        clock=clock,
        rng=rng,
    )
    info = hpke_info(chosen.name, identity.name, recipient.name, recipient.kid)
    sealed = chosen.hpke_seal(recipient.public_key, inner, info)
    data = _pack([ENVELOPE_VERSION, chosen.name, identity.name, recipient.kid, sealed])
    if len(data) > max_envelope_bytes:
        # Refuse here rather than let every receiver refuse it later.
        raise EnvelopeTooLargeError(f"sealed envelope is {len(data)} bytes")
    return SealedEnvelope(data, msg_id, timestamp)


def seal(
    *,
    suite: Suite | str = DEFAULT_SUITE_NAME,
    identity: LocalIdentity,
    recipient: RecipientKey,
    msg_type: str,
    body: bytes,
    correlation_id: bytes | None = None,
    clock: Callable[[], int],
    rng: Callable[[int], bytes],
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
) -> bytes:
    """Like ``seal_envelope`` but returns only the bytes."""
    return seal_envelope(
        suite=suite,
        identity=identity,
        recipient=recipient,
        msg_type=msg_type,
        body=body,
        correlation_id=correlation_id,
        clock=clock,
        rng=rng,
        max_envelope_bytes=max_envelope_bytes,
    ).data


# ---- opening --------------------------------------------------------------------------------------


class _Outer(NamedTuple):
    suite: Suite
    sender: str
    recipient_kid: bytes
    sealed: bytes


class _Inner(NamedTuple):
    fields: list[Any]
    msg_type: str
    msg_id: bytes
    timestamp_ms: int
    sender: str
    recipient: str
    recipient_kid: bytes
    correlation_id: bytes | None
    body: bytes
    signer_kid: bytes
    signature: bytes


def _parse_outer(data: bytes, policy: EnvelopePolicy) -> _Outer:
    """Checks 1 (structure) and 2 (version, suite); no key material is touched."""
    fields = _unpack_array(data, max_items=OUTER_FIELDS, max_bin=policy.max_envelope_bytes)
    # The version is read before the shape, so a future version with another layout is reported
    # as unsupported rather than as malformed.
    if not fields or not _is_int(fields[0]):
        raise MalformedEnvelopeError("outer array must start with an integer version")
    if fields[0] != ENVELOPE_VERSION:
        raise UnsupportedVersionError(f"envelope version {fields[0]}")
    if len(fields) != OUTER_FIELDS:
        raise MalformedEnvelopeError("outer array has the wrong number of fields")
    _, suite_name, sender, recipient_kid, sealed = fields
    if (
        type(suite_name) is not str
        or not _is_name(sender)
        or not _is_bytes(recipient_kid, KID_LEN)
        or type(sealed) is not bytes
    ):
        raise MalformedEnvelopeError("outer field has the wrong type")
    _require_canonical(data, fields)
    if suite_name not in policy.allowed_suites:
        raise UnsupportedSuiteError(f"suite {suite_name[:MAX_SUITE_NAME_LEN]!r} not allowed")
    return _Outer(get_suite(suite_name), sender, recipient_kid, sealed)


def _parse_inner(data: bytes, policy: EnvelopePolicy) -> _Inner:
    fields = _unpack_array(data, max_items=INNER_FIELDS, max_bin=policy.max_envelope_bytes)
    if len(fields) != INNER_FIELDS:
        raise MalformedEnvelopeError("inner array has the wrong number of fields")
    (version, msg_type, msg_id, ts, sender, recipient, rkid, corr, body, skid, sig) = fields
    ok = (
        _is_int(version)
        and type(msg_type) is str
        and _valid_msg_type(msg_type)
        and _is_bytes(msg_id, MSG_ID_LEN)
        and _is_int(ts)
        and 0 <= ts <= MAX_TIMESTAMP_MS
        and _is_name(sender)
        and _is_name(recipient)
        and _is_bytes(rkid, KID_LEN)
        and (corr is None or _is_bytes(corr, CORRELATION_ID_LEN))
        and type(body) is bytes
        and _is_bytes(skid, KID_LEN)
        and _is_bytes(sig, SIGNATURE_LEN)
    )
    if not ok:
        raise MalformedEnvelopeError("inner field has the wrong type or length")
    if version != ENVELOPE_VERSION:
        raise UnsupportedVersionError("inner version differs from the outer version")
    _require_canonical(data, fields)
    return _Inner(fields[:10], msg_type, msg_id, ts, sender, recipient, rkid, corr, body, skid, sig)


def open_envelope(
    data: bytes,
    *,
    me: Keyring,
    trust: SignerDirectory,
    now_ms: int,
    policy: EnvelopePolicy,
    broker_user_id: str | None = None,
    expected_correlation_id: bytes | None = None,
) -> OpenedMessage:
    """Run checks 1-7 of the security design on ``data``; raise ``EnvelopeError`` on failure.

    The replay decision (check 8) is the caller's, using ``sender``, ``msg_id`` and ``digest``
    of the result; only messages that passed here may reach the replay store.
    """
    # 1. Size cap before anything else, then a well-formed outer array.
    if type(data) is not bytes:
        raise MalformedEnvelopeError("envelope must be bytes")
    if len(data) > policy.max_envelope_bytes:
        raise EnvelopeTooLargeError(f"{len(data)} > {policy.max_envelope_bytes} bytes")
    # 2. Version and suite allow-listed (inside _parse_outer).
    outer = _parse_outer(data, policy)
    # 3. The recipient key must be one of ours, for this suite's KEM.
    private_key = me.decryption_key(outer.recipient_kid, outer.suite)
    # 4. Decrypt. The info binds version, suite, both names and the key id, so an outer header
    #    edited in transit makes decryption fail.
    info = hpke_info(outer.suite.name, outer.sender, me.name, outer.recipient_kid)
    inner = _parse_inner(outer.suite.hpke_open(private_key, outer.sealed, info), policy)
    # 5. Signature, with a key from a trusted, unrevoked, in-date certificate.
    signer = trust.signing_cert(inner.signer_kid, now_ms)
    outer.suite.verify(
        signer.public_key, inner.signature, signed_bytes(outer.suite.name, inner.fields)
    )
    # 6. Identity bindings: who signed it, who it was for, and which key it was encrypted to.
    if inner.recipient != me.name:
        raise IdentityMismatchError("message was signed for another recipient")
    if inner.recipient_kid != outer.recipient_kid:
        raise IdentityMismatchError("message was signed for another encryption key")
    if inner.sender != signer.identity:
        raise IdentityMismatchError("sender is not the identity of the signing certificate")
    if inner.sender != outer.sender:
        raise IdentityMismatchError("outer sender differs from the signed sender")
    if broker_user_id is not None and broker_user_id != inner.sender:
        raise IdentityMismatchError("broker user id differs from the signed sender")
    if expected_correlation_id is not None and inner.correlation_id != expected_correlation_id:
        raise CorrelationMismatchError("response does not answer the expected request")
    # 7. Timestamp inside [now - window - skew, now + skew].
    if inner.timestamp_ms < now_ms - policy.window_ms - policy.skew_ms:
        raise StaleMessageError(f"{now_ms - inner.timestamp_ms} ms old")
    if inner.timestamp_ms > now_ms + policy.skew_ms:
        raise FromFutureError(f"{inner.timestamp_ms - now_ms} ms ahead")
    return OpenedMessage(
        msg_type=inner.msg_type,
        msg_id=inner.msg_id,
        timestamp_ms=inner.timestamp_ms,
        sender=inner.sender,
        recipient=inner.recipient,
        correlation_id=inner.correlation_id,
        body=inner.body,
        suite=outer.suite.name,
        digest=hashlib.sha256(data).digest(),
        signer_kid=inner.signer_kid,
        recipient_kid=inner.recipient_kid,
    )


__all__ = [
    "EnvelopeError",
    "EnvelopePolicy",
    "Keyring",
    "OpenedMessage",
    "SealedEnvelope",
    "SignerDirectory",
    "VerifiedSigner",
    "build_signed_inner",
    "hpke_info",
    "open_envelope",
    "seal",
    "seal_envelope",
    "signed_bytes",
]
