"""Envelope v1: a signed inner message inside HPKE (or an HPKE-wrapped epoch key and AES-GCM).

This module opens envelopes and re-exports the format (``envelope_format``) and sealing
(``envelope_seal``). Everything is pure: clock, randomness and keys are injected.
``open_envelope`` runs the checks of docs/envelope.md in order, cheap first, and raises an
``EnvelopeError`` subclass on any failure; it never returns a "not valid" value.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker_adapter.envelope_errors import (
    CorrelationMismatchError,
    DecryptionFailedError,
    EnvelopeError,
    EnvelopeTooLargeError,
    FromFutureError,
    IdentityMismatchError,
    MalformedEnvelopeError,
    StaleMessageError,
    UnsupportedSuiteError,
    UnsupportedVersionError,
)
from broker_adapter.envelope_format import (
    AEAD_TAG_LEN,
    CORRELATION_ID_LEN,
    DEFAULT_SKEW_MS,
    DEFAULT_WINDOW_MS,
    EPOCH_OUTER_FIELDS,
    INNER_FIELDS,
    MAX_SUITE_NAME_LEN,
    MAX_TIMESTAMP_MS,
    MSG_ID_LEN,
    OUTER_FIELDS,
    EnvelopePolicy,
    Keyring,
    OpenedMessage,
    SealedEnvelope,
    SignerDirectory,
    VerifiedSigner,
    epoch_aad,
    hpke_info,
    is_bytes,
    is_int,
    is_name,
    require_canonical,
    signed_bytes,
    signed_from_inner,
    unpack_array,
    valid_msg_type,
)
from broker_adapter.envelope_seal import build_signed_inner, encrypt_inner, seal, seal_envelope
from broker_adapter.epoch import EPOCH_KEY_LEN, NONCE_LEN, EpochKeyCache
from broker_adapter.identity import KID_LEN
from broker_adapter.suites import (
    ENVELOPE_VERSION,
    SIGNATURE_LEN,
    SUITES,
    KemPrivateKey,
    KeyMode,
    Suite,
)

# Version and suite: read before the layout, which the suite selects.
_HEADER_FIELDS = 2


class _Outer(NamedTuple):
    suite: Suite
    sender: str
    recipient_kid: bytes
    sealed: bytes  # per-message: HPKE enc || ciphertext; epoch: the wrapped epoch key
    nonce: bytes  # epoch suites only (b"" otherwise)
    ciphertext: bytes  # epoch suites only (b"" otherwise)


class _Inner(NamedTuple):
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


class _Decrypted(NamedTuple):
    inner: bytes
    # An epoch key unwrapped just now: what to cache once the message is verified.
    new_epoch: tuple[bytes, AESGCM] | None


def _outer_of(data: bytes, policy: EnvelopePolicy) -> _Outer:
    """Checks 1 (size, structure) and 2 (version, suite); no key material is touched."""
    if type(data) is not bytes:
        raise MalformedEnvelopeError("envelope must be bytes")
    if len(data) > policy.max_envelope_bytes:
        raise EnvelopeTooLargeError(f"{len(data)} > {policy.max_envelope_bytes} bytes")
    fields = unpack_array(data, max_items=EPOCH_OUTER_FIELDS, max_bin=policy.max_envelope_bytes)
    suite = _suite_of(fields, policy)
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
            is_bytes(sealed, suite.wrapped_key_len)
            and is_bytes(nonce, NONCE_LEN)
            and type(ciphertext) is bytes
            and len(ciphertext) >= AEAD_TAG_LEN
        )
    if not ok or not is_name(sender) or not is_bytes(recipient_kid, KID_LEN):
        raise MalformedEnvelopeError("outer field has the wrong type")
    require_canonical(data, fields)
    return _Outer(suite, sender, recipient_kid, sealed, nonce, ciphertext)


def _suite_of(fields: list[Any], policy: EnvelopePolicy) -> Suite:
    # A future version with another layout is reported as unsupported, not as malformed.
    if not fields or not is_int(fields[0]):
        raise MalformedEnvelopeError("outer array must start with an integer version")
    if fields[0] != ENVELOPE_VERSION:
        raise UnsupportedVersionError(f"envelope version {fields[0]}")
    # The layout is never chosen by a suite we do not accept.
    if len(fields) < _HEADER_FIELDS or type(fields[1]) is not str:
        raise MalformedEnvelopeError("outer array must name a suite")
    if fields[1] not in policy.allowed_suites:
        raise UnsupportedSuiteError(f"suite {fields[1][:MAX_SUITE_NAME_LEN]!r} not allowed")
    return SUITES[fields[1]]


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
    # Keyed on the whole HPKE context, so a hit means this blob was unwrapped in this context.
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
    fields = unpack_array(data, max_items=INNER_FIELDS, max_bin=policy.max_envelope_bytes)
    if len(fields) != INNER_FIELDS:
        raise MalformedEnvelopeError("inner array has the wrong number of fields")
    (version, msg_type, msg_id, ts, sender, recipient, rkid, corr, body, skid, sig) = fields
    ok = (
        is_int(version)
        and type(msg_type) is str
        and valid_msg_type(msg_type)
        and is_bytes(msg_id, MSG_ID_LEN)
        and is_int(ts)
        and 0 <= ts <= MAX_TIMESTAMP_MS
        and is_name(sender)
        and is_name(recipient)
        and is_bytes(rkid, KID_LEN)
        and (corr is None or is_bytes(corr, CORRELATION_ID_LEN))
        and type(body) is bytes
        and is_bytes(skid, KID_LEN)
        and is_bytes(sig, SIGNATURE_LEN)
    )
    if not ok:
        raise MalformedEnvelopeError("inner field has the wrong type or length")
    if version != ENVELOPE_VERSION:
        raise UnsupportedVersionError("inner version differs from the outer version")
    require_canonical(data, fields)
    return _Inner(msg_type, msg_id, ts, sender, recipient, rkid, corr, body, skid, sig)


def _check_bindings(
    inner: _Inner, outer: _Outer, me_name: str, signer: str, broker_user_id: str | None
) -> None:
    """Check 6: who signed it, who it was for, and which key it was encrypted to."""
    if inner.recipient != me_name:
        raise IdentityMismatchError("message was signed for another recipient")
    if inner.recipient_kid != outer.recipient_kid:
        raise IdentityMismatchError("message was signed for another encryption key")
    if inner.sender != signer:
        raise IdentityMismatchError("sender is not the identity of the signing certificate")
    if inner.sender != outer.sender:
        raise IdentityMismatchError("outer sender differs from the signed sender")
    if broker_user_id is not None and broker_user_id != inner.sender:
        raise IdentityMismatchError("broker user id differs from the signed sender")


def decrypt_envelope(
    data: bytes,
    *,
    me: Keyring,
    policy: EnvelopePolicy,
    now_ms: int = 0,
    epoch_cache: EpochKeyCache | None = None,
) -> bytes:
    """Checks 1-4 only: the signed inner bytes, NOT verified; for tools and tests.

    Lets a test play a recipient that re-encrypts a message elsewhere. Never adds to the cache.
    """
    outer = _outer_of(data, policy)
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
    """Run checks 1-7 on ``data``; raise ``EnvelopeError`` on failure.

    The replay decision (check 8) is the caller's. ``epoch_cache`` remembers unwrapped epoch
    keys; without it every epoch envelope costs one HPKE open.
    """
    outer = _outer_of(data, policy)  # checks 1 and 2
    private_key = me.decryption_key(outer.recipient_kid, outer.suite)  # 3
    # 4. The info (and aad) bind version, suite, both names and the key id to the ciphertext.
    decrypted = _decrypt(outer, me.name, private_key, epoch_cache, now_ms)
    inner = _parse_inner(decrypted.inner, policy)
    # 5. Signature, with a key from a trusted, unrevoked, in-date certificate.
    signer = trust.signing_cert(inner.signer_kid, now_ms)
    outer.suite.verify(
        signer.public_key, inner.signature, signed_from_inner(outer.suite.name, decrypted.inner)
    )
    _check_bindings(inner, outer, me.name, signer.identity, broker_user_id)  # 6
    if decrypted.new_epoch is not None and epoch_cache is not None:
        # Cached only now that a trusted signer sent it to us: junk never enters the cache.
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
    "DEFAULT_SKEW_MS",
    "DEFAULT_WINDOW_MS",
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
