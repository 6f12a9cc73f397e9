"""Coded errors of the message layer: envelope, trust store and replay decisions.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

from broker_adapter.errors import BrokerAdapterError, Fault


class EnvelopeError(BrokerAdapterError):
    """Root of every envelope failure; ``open_envelope`` raises nothing else."""

    code = "envelope_error"
    fault = Fault.REMOTE


class MalformedEnvelopeError(EnvelopeError):
    """The bytes are not a well-formed v1 structure (outer or, after decryption, inner)."""

    code = "malformed"


class EnvelopeTooLargeError(EnvelopeError):
    """The input exceeds the configured size cap; nothing was parsed."""

    code = "too_large"


class UnsupportedVersionError(EnvelopeError):
    code = "unsupported_version"


class UnsupportedSuiteError(EnvelopeError):
    """The suite is unknown or not on this deployment's allow-list."""

    code = "unsupported_suite"


class NotForMeError(EnvelopeError):
    """The recipient key id is not one of our decryption keys for that suite."""

    code = "not_for_me"


class DecryptionFailedError(EnvelopeError):
    code = "decryption_failed"


class BadSignatureError(EnvelopeError):
    code = "bad_signature"


class UntrustedSignerError(EnvelopeError):
    """Unknown signer key id, a chain that does not verify, wrong key usage or a stale CRL."""

    code = "untrusted_signer"


class StaleTrustError(UntrustedSignerError):
    """Our own trust material lapsed (no current CRL for the issuing CA): no verdict on the
    message; every message would fail alike until the CRL is renewed."""

    code = "stale_trust"
    fault = Fault.LOCAL


class RevokedSignerError(UntrustedSignerError):
    code = "revoked_signer"


class ExpiredSignerError(UntrustedSignerError):
    """The certificate (or a certificate of its chain) is outside its validity period."""

    code = "expired_signer"


class IdentityMismatchError(EnvelopeError):
    """Sender, recipient or recipient key id disagree between the layers that name them."""

    code = "identity_mismatch"


class CorrelationMismatchError(EnvelopeError):
    code = "correlation_mismatch"


class StaleMessageError(EnvelopeError):
    code = "stale"


class FromFutureError(EnvelopeError):
    code = "from_future"


class ReplayError(EnvelopeError):
    """Root of replay-guard decisions that refuse a message."""

    code = "replay"


class ReplayConflictError(ReplayError):
    """Same sender and id as a known message but different bytes: forgery or a producer bug."""

    code = "replay_conflict"


class OwnCertificateExpiredError(EnvelopeError):
    """Our own signing certificate has expired: every peer would refuse what we seal."""

    code = "own_certificate_expired"
    fault = Fault.LOCAL


class InvalidSealInputError(EnvelopeError):
    """The caller asked to seal something v1 cannot carry (bad name, id length, key type...)."""

    code = "invalid_seal_input"
    fault = Fault.LOCAL


class NoRecipientKeyError(EnvelopeError):
    """The trust store holds no valid encryption certificate for that peer and suite: the peer's
    (a lapsed or revoked certificate), so a reply it cannot get is its own message's verdict."""

    code = "no_recipient_key"


class TrustStoreError(BrokerAdapterError):
    """Trust material could not be loaded; on reload the previous snapshot stays in force."""

    code = "trust_store"
    fault = Fault.LOCAL
