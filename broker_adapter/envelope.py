"""Envelope format v1: a signed inner message inside HPKE, inside a small msgpack outer array.

Wire format (docs/envelope.md has the full description)::

    outer = [version, suite, sender, recipient_kid, enc||ciphertext]             per-message
    outer = [version, suite, sender, recipient_kid, wrapped_key, nonce, ct]      epoch (*-E)
    inner = [version, msg_type, msg_id, timestamp_ms, sender, recipient, recipient_kid,
             correlation_id, body, signer_kid, signature]
    signature = Sign(signer key, msgpack([SIG_LABEL, suite, *inner[:10]]))
    info      = msgpack([INFO_LABEL, version, suite, sender, recipient, recipient_kid])
    aad       = msgpack([AEAD_LABEL, version, suite, sender, recipient, recipient_kid])

Per-message suites HPKE-seal the inner message with ``info``. Epoch suites HPKE-seal a 32-byte
epoch key K with the same ``info`` once per epoch (``broker_adapter.epoch``) and encrypt the
inner message with AES-256-GCM under K, a random 96-bit nonce and ``aad``.

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
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker_adapter.envelope_errors import (
    CorrelationMismatchError,
    DecryptionFailedError,
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
from broker_adapter.epoch import (
    EPOCH_KEY_LEN,
    NONCE_LEN,
    EpochKeyCache,
    SenderEpoch,
    SenderEpochs,
)
from broker_adapter.identity import KID_LEN, LocalIdentity, RecipientKey, is_identity_name
from broker_adapter.suites import (
    DEFAULT_SUITE_NAME,
    ENVELOPE_VERSION,
    SIGNATURE_LEN,
    SUITES,
    KemPrivateKey,
    KeyMode,
    SigningPublicKey,
    Suite,
    get_suite,
)

# Domain-separation labels: a signature or an HPKE context made for this protocol can never be
# mistaken for one made for another protocol that happens to use the same keys.
SIG_LABEL = "AKMA-ENVELOPE-SIG"
INFO_LABEL = "AKMA-ENVELOPE-HPKE"
AEAD_LABEL = "AKMA-ENVELOPE-AEAD"

MSG_ID_LEN = 16
CORRELATION_ID_LEN = 16  # a correlation id is the msg_id of the request being answered
MAX_MSG_TYPE_LEN = 64
MAX_SUITE_NAME_LEN = 64
MAX_NAME_LEN = 253
# Timestamps are unsigned 63-bit milliseconds, so they fit every integer type on every side.
MAX_TIMESTAMP_MS = 2**63 - 1

OUTER_FIELDS = 5
EPOCH_OUTER_FIELDS = 7
AEAD_TAG_LEN = 16
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


def epoch_aad(suite: str, sender: str, recipient: str, recipient_kid: bytes) -> bytes:
    """AES-GCM associated data of an epoch envelope: the same context as ``hpke_info``."""
    return _pack([AEAD_LABEL, ENVELOPE_VERSION, suite, sender, recipient, recipient_kid])


def signed_bytes(suite: str, fields: list[Any]) -> bytes:
    """The exact bytes the signature covers: label, suite, then inner fields 0..9."""
    return _pack([SIG_LABEL, suite, *fields])


# msgpack encodes an array as a header followed by its elements' encodings, so the signed bytes
# and the inner message share the encoding of fields 0..9. Splicing them avoids packing the
# same fields twice per message; test_envelope_kat checks the result against the rule above.
_FIXARRAY_INNER = bytes([0x90 | INNER_FIELDS])
_FIXARRAY_SIGNED = bytes([0x90 | (INNER_FIELDS + 1)])
_SIGNATURE_HEADER = b"\xc4" + bytes([SIGNATURE_LEN])  # bin8 of exactly 64 bytes
_SIGNED_PREFIX: dict[str, bytes] = {}


def _signed_prefix(suite: str) -> bytes:
    prefix = _SIGNED_PREFIX.get(suite)
    if prefix is None:
        prefix = _FIXARRAY_SIGNED + msgpack.packb(SIG_LABEL) + msgpack.packb(suite)
        _SIGNED_PREFIX[suite] = prefix
    return prefix


def _signed_from_inner(suite: str, inner: bytes) -> bytes:
    """``signed_bytes`` of a canonical inner message, cut out of its encoding."""
    return _signed_prefix(suite) + inner[1 : -(len(_SIGNATURE_HEADER) + SIGNATURE_LEN)]


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
    signed = signed_bytes(suite.name, fields)
    signature = suite.sign(identity.signing_key, signed)
    # The inner message is [*fields, signature]: reuse the fields' encoding from ``signed``.
    inner = _FIXARRAY_INNER + signed[len(_signed_prefix(suite.name)) :]
    return inner + _SIGNATURE_HEADER + signature, msg_id, timestamp


def _draw(rng: Callable[[int], bytes], n: int) -> bytes:
    value = rng(n)
    if type(value) is not bytes or len(value) != n:
        raise InvalidSealInputError("rng must return the number of bytes asked for")
    return value


def encrypt_inner(
    inner: bytes,
    *,
    suite: Suite,
    sender: str,
    recipient: RecipientKey,
    rng: Callable[[int], bytes],
    now_ms: int,
    epochs: SenderEpochs | None = None,
) -> bytes:
    """Encrypt a signed inner message to ``recipient`` and return the outer envelope bytes.

    Per-message suites run HPKE on ``inner``. Epoch suites take the live epoch for this peer
    from ``epochs`` (wrapping a fresh key K when there is none, or the old one reached its
    limits) and encrypt ``inner`` with AES-256-GCM under K; without ``epochs`` every call is
    its own one-message epoch, correct but without the saving.
    """
    info = hpke_info(suite.name, sender, recipient.name, recipient.kid)
    if suite.mode is KeyMode.PER_MESSAGE:
        sealed = suite.hpke_seal(recipient.public_key, inner, info)
        return _pack([ENVELOPE_VERSION, suite.name, sender, recipient.kid, sealed])

    def new_epoch() -> SenderEpoch:
        key = _draw(rng, EPOCH_KEY_LEN)
        return SenderEpoch(
            wrapped=suite.hpke_seal(recipient.public_key, key, info),
            aead=AESGCM(key),
            aad=epoch_aad(suite.name, sender, recipient.name, recipient.kid),
            created_ms=now_ms,
        )

    if epochs is None:
        epoch = new_epoch()
    else:
        epoch = epochs.acquire(
            (suite.name, sender, recipient.name, recipient.kid), now_ms, new_epoch
        )
    # A fresh random 96-bit nonce per message: no state to keep in step between threads or
    # processes, and with at most 2^32 (default 10,000) messages per key a collision is
    # negligible (birthday bound about n^2 / 2^97).
    nonce = _draw(rng, NONCE_LEN)
    ciphertext = epoch.aead.encrypt(nonce, inner, epoch.aad)
    return _pack(
        [ENVELOPE_VERSION, suite.name, sender, recipient.kid, epoch.wrapped, nonce, ciphertext]
    )


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
    epochs: SenderEpochs | None = None,
) -> SealedEnvelope:
    """Sign, then encrypt to ``recipient``; return the envelope bytes and its message id.

    ``epochs`` is the sender's epoch state for the epoch suites (ignored by the others); the
    epoch's age is measured on the message's own timestamp, from the same injected clock.
    """
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
    data = encrypt_inner(
        inner,
        suite=chosen,
        sender=identity.name,
        recipient=recipient,
        rng=rng,
        now_ms=timestamp,
        epochs=epochs,
    )
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
    epochs: SenderEpochs | None = None,
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
        epochs=epochs,
    ).data


# ---- opening --------------------------------------------------------------------------------------


class _Outer(NamedTuple):
    suite: Suite
    sender: str
    recipient_kid: bytes
    sealed: bytes  # per-message: HPKE enc || ciphertext; epoch: the wrapped epoch key
    nonce: bytes  # epoch suites only (b"" otherwise)
    ciphertext: bytes  # epoch suites only (b"" otherwise)


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
    fields = _unpack_array(data, max_items=EPOCH_OUTER_FIELDS, max_bin=policy.max_envelope_bytes)
    # The version is read before the shape, so a future version with another layout is reported
    # as unsupported rather than as malformed.
    if not fields or not _is_int(fields[0]):
        raise MalformedEnvelopeError("outer array must start with an integer version")
    if fields[0] != ENVELOPE_VERSION:
        raise UnsupportedVersionError(f"envelope version {fields[0]}")
    # The suite selects the layout (per-message or epoch), so it is allow-listed before the
    # rest of the shape is read: the layout is never chosen by a suite we do not accept.
    if len(fields) < 2 or type(fields[1]) is not str:
        raise MalformedEnvelopeError("outer array must name a suite")
    suite_name = fields[1]
    if suite_name not in policy.allowed_suites:
        raise UnsupportedSuiteError(f"suite {suite_name[:MAX_SUITE_NAME_LEN]!r} not allowed")
    suite = SUITES[suite_name]
    if suite.mode is KeyMode.PER_MESSAGE:
        if len(fields) != OUTER_FIELDS:
            raise MalformedEnvelopeError("outer array has the wrong number of fields")
        _, _, sender, recipient_kid, sealed = fields
        nonce = ciphertext = b""
        ok = type(sealed) is bytes
    else:
        if len(fields) != EPOCH_OUTER_FIELDS:
            raise MalformedEnvelopeError("outer array has the wrong number of fields")
        _, _, sender, recipient_kid, sealed, nonce, ciphertext = fields
        ok = (
            _is_bytes(sealed, suite.wrapped_key_len)
            and _is_bytes(nonce, NONCE_LEN)
            and type(ciphertext) is bytes
            and len(ciphertext) >= AEAD_TAG_LEN
        )
    if not ok or not _is_name(sender) or not _is_bytes(recipient_kid, KID_LEN):
        raise MalformedEnvelopeError("outer field has the wrong type")
    _require_canonical(data, fields)
    return _Outer(suite, sender, recipient_kid, sealed, nonce, ciphertext)


class _Decrypted(NamedTuple):
    inner: bytes
    # For an epoch key unwrapped by HPKE just now: what to cache once the message is verified.
    new_epoch: tuple[bytes, AESGCM] | None


def _decrypt(
    outer: _Outer,
    me_name: str,
    private_key: KemPrivateKey,
    epoch_cache: EpochKeyCache | None,
    now_ms: int,
) -> _Decrypted:
    """Check 4: HPKE (per-message), or cached/unwrapped epoch key plus AES-GCM (epoch)."""
    suite = outer.suite
    info = hpke_info(suite.name, outer.sender, me_name, outer.recipient_kid)
    if suite.mode is KeyMode.PER_MESSAGE:
        return _Decrypted(suite.hpke_open(private_key, outer.sealed, info), None)
    # The epoch id covers the whole HPKE context, not only the wrapped bytes: a cache hit then
    # means exactly "this blob was unwrapped with this suite, sender, recipient and key id".
    epoch_id = hashlib.sha256(info + outer.sealed).digest()
    aead = epoch_cache.get(epoch_id, now_ms) if epoch_cache is not None else None
    new_epoch = None
    if aead is None:
        key = suite.hpke_open(private_key, outer.sealed, info)
        if len(key) != EPOCH_KEY_LEN:
            raise DecryptionFailedError("epoch key has the wrong length")
        aead = AESGCM(key)
        new_epoch = (epoch_id, aead)
    aad = epoch_aad(suite.name, outer.sender, me_name, outer.recipient_kid)
    try:
        inner = aead.decrypt(outer.nonce, outer.ciphertext, aad)
    except InvalidTag:
        raise DecryptionFailedError("AES-GCM open failed") from None
    return _Decrypted(inner, new_epoch)


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


def decrypt_envelope(
    data: bytes,
    *,
    me: Keyring,
    policy: EnvelopePolicy,
    now_ms: int = 0,
    epoch_cache: EpochKeyCache | None = None,
) -> bytes:
    """Checks 1-4 only: return the signed inner bytes, NOT verified. For tools and tests.

    Nothing returned here may be trusted; it exists so that tests can play a recipient who
    decrypts a message and re-encrypts it elsewhere (surreptitious forwarding). It never adds
    to ``epoch_cache``.
    """
    if type(data) is not bytes:
        raise MalformedEnvelopeError("envelope must be bytes")
    if len(data) > policy.max_envelope_bytes:
        raise EnvelopeTooLargeError(f"{len(data)} > {policy.max_envelope_bytes} bytes")
    outer = _parse_outer(data, policy)
    private_key = me.decryption_key(outer.recipient_kid, outer.suite)
    return _decrypt(outer, me.name, private_key, epoch_cache, now_ms).inner


def open_envelope(
    data: bytes,
    *,
    me: Keyring,
    trust: SignerDirectory,
    now_ms: int,
    policy: EnvelopePolicy,
    broker_user_id: str | None = None,
    expected_correlation_id: bytes | None = None,
    epoch_cache: EpochKeyCache | None = None,
) -> OpenedMessage:
    """Run checks 1-7 of the security design on ``data``; raise ``EnvelopeError`` on failure.

    The replay decision (check 8) is the caller's, using ``sender``, ``msg_id`` and ``digest``
    of the result; only messages that passed here may reach the replay store. ``epoch_cache``
    remembers unwrapped epoch keys (epoch suites); without it every epoch envelope costs one
    HPKE open, like a per-message suite.
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
    # 4. Decrypt. The info (and for epoch suites also the AES-GCM aad) binds version, suite,
    #    both names and the key id, so an outer header edited in transit makes decryption fail.
    decrypted = _decrypt(outer, me.name, private_key, epoch_cache, now_ms)
    inner = _parse_inner(decrypted.inner, policy)
    # 5. Signature, with a key from a trusted, unrevoked, in-date certificate.
    signer = trust.signing_cert(inner.signer_kid, now_ms)
    outer.suite.verify(
        signer.public_key, inner.signature, _signed_from_inner(outer.suite.name, decrypted.inner)
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
    if decrypted.new_epoch is not None and epoch_cache is not None:
        # Only now is the epoch key worth keeping: a trusted signer sent us, under it, a
        # message bound to us. Junk that merely unwraps never enters the cache.
        epoch_cache.put(*decrypted.new_epoch, now_ms)
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
    "decrypt_envelope",
    "encrypt_inner",
    "epoch_aad",
    "hpke_info",
    "open_envelope",
    "seal",
    "seal_envelope",
    "signed_bytes",
]
