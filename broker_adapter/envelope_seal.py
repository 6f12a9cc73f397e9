"""Sealing: sign the inner message, then encrypt it to the recipient (docs/envelope.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker_adapter.envelope_errors import EnvelopeTooLargeError, InvalidSealInputError
from broker_adapter.envelope_format import (
    CORRELATION_ID_LEN,
    DEFAULT_MAX_ENVELOPE_BYTES,
    FIXARRAY_INNER,
    MAX_TIMESTAMP_MS,
    MSG_ID_LEN,
    SIGNATURE_HEADER,
    SealedEnvelope,
    epoch_aad,
    hpke_info,
    is_bytes,
    is_int,
    pack,
    signed_bytes,
    signed_prefix,
    valid_msg_type,
)
from broker_adapter.epoch import EPOCH_KEY_LEN, NONCE_LEN, SenderEpoch, SenderEpochs
from broker_adapter.identity import KID_LEN, LocalIdentity, RecipientKey, is_identity_name
from broker_adapter.suites import DEFAULT_SUITE_NAME, ENVELOPE_VERSION, KeyMode, Suite, get_suite

_P = ParamSpec("_P")


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
    if not valid_msg_type(msg_type):
        raise InvalidSealInputError("message type must be 1-64 printable ASCII characters")
    if type(body) is not bytes:
        raise InvalidSealInputError("body must be bytes")
    if correlation_id is not None and not is_bytes(correlation_id, CORRELATION_ID_LEN):
        raise InvalidSealInputError("correlation id must be 16 bytes (the request's msg_id)")
    if not is_identity_name(recipient.name) or len(recipient.kid) != KID_LEN:
        raise InvalidSealInputError("recipient name or key id is invalid")
    msg_id = _draw(rng, MSG_ID_LEN)
    timestamp = clock()
    if not is_int(timestamp) or not 0 <= timestamp <= MAX_TIMESTAMP_MS:
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
    inner = FIXARRAY_INNER + signed[len(signed_prefix(suite.name)) :]
    return inner + SIGNATURE_HEADER + signature, msg_id, timestamp


def _draw(rng: Callable[[int], bytes], n: int) -> bytes:
    value = rng(n)
    if not is_bytes(value, n):
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
    """Encrypt a signed inner message to ``recipient``; return the outer envelope bytes.

    Epoch suites take the live epoch for this peer from ``epochs``; without it every call is a
    one-message epoch.
    """
    info = hpke_info(suite.name, sender, recipient.name, recipient.kid)
    if suite.mode is KeyMode.PER_MESSAGE:
        sealed = suite.hpke_seal(recipient.public_key, inner, info)
        return pack([ENVELOPE_VERSION, suite.name, sender, recipient.kid, sealed])

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
        slot = (suite.name, sender, recipient.name, recipient.kid)
        epoch = epochs.acquire(slot, now_ms, new_epoch)
    # Random nonces need no shared state; at <= 2^32 messages per key collisions are negligible.
    nonce = _draw(rng, NONCE_LEN)
    ciphertext = epoch.aead.encrypt(nonce, inner, epoch.aad)
    return pack(
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
    """Sign, then encrypt to ``recipient``; ``epochs`` is the sender's epoch state."""
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


def _data_only(sealer: Callable[_P, SealedEnvelope]) -> Callable[_P, bytes]:
    def sealed_bytes(*args: _P.args, **kwargs: _P.kwargs) -> bytes:
        return sealer(*args, **kwargs).data

    return sealed_bytes


# ``seal_envelope`` returning only the bytes.
seal = _data_only(seal_envelope)
