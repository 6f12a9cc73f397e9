"""Coded errors of the message layer: envelope, trust store and replay decisions.

Every failure while opening an envelope raises a subclass of ``EnvelopeError``; its ``code`` is
stable and goes to dead-letter headers, metric labels and the audit log. A remote party never
sees these codes: whatever goes back over the wire is a ``RejectedError``, which carries one
fixed code, so a peer cannot use our answers as an oracle for which check failed.
"""

from __future__ import annotations

from broker_adapter.errors import BrokerAdapterError


class EnvelopeError(BrokerAdapterError):
    """Root of every envelope failure; ``open_envelope`` raises nothing else."""

    code = "envelope_error"


# ---- step 1: size and structure -----------------------------------------------------------


class MalformedEnvelopeError(EnvelopeError):
    """The bytes are not a well-formed v1 structure (outer or, after decryption, inner)."""

    code = "malformed"


class EnvelopeTooLargeError(EnvelopeError):
    """The input exceeds the configured size cap; nothing was parsed."""

    code = "too_large"


# ---- step 2: version and suite --------------------------------------------------------------


class UnsupportedVersionError(EnvelopeError):
    code = "unsupported_version"


class UnsupportedSuiteError(EnvelopeError):
    """The suite is unknown or not on this deployment's allow-list."""

    code = "unsupported_suite"


# ---- step 3 and 4: recipient key and decryption ---------------------------------------------


class NotForMeError(EnvelopeError):
    """The recipient key id is not one of our decryption keys for that suite."""

    code = "not_for_me"


class DecryptionFailedError(EnvelopeError):
    code = "decryption_failed"


# ---- step 5: signature and signer certificate -----------------------------------------------


class BadSignatureError(EnvelopeError):
    code = "bad_signature"


class UntrustedSignerError(EnvelopeError):
    """Unknown signer key id, a chain that does not verify, wrong key usage or a stale CRL."""

    code = "untrusted_signer"


class RevokedSignerError(UntrustedSignerError):
    code = "revoked_signer"


class ExpiredSignerError(UntrustedSignerError):
    """The certificate (or a certificate of its chain) is outside its validity period."""

    code = "expired_signer"


# ---- step 6: identity bindings ----------------------------------------------------------------


class IdentityMismatchError(EnvelopeError):
    """Sender, recipient or recipient key id disagree between the layers that name them."""

    code = "identity_mismatch"


class CorrelationMismatchError(EnvelopeError):
    code = "correlation_mismatch"


# ---- step 7: time -----------------------------------------------------------------------------


class StaleMessageError(EnvelopeError):
    code = "stale"


class FromFutureError(EnvelopeError):
    code = "from_future"


# ---- step 8: replay (raised by ``broker_adapter.replay``) -------------------------------------


class ReplayError(EnvelopeError):
    """Root of replay-guard decisions that refuse a message."""

    code = "replay"


class DuplicateMessageError(ReplayError):
    """Same sender, id and bytes as a message already processed: a harmless redelivery."""

    code = "duplicate"


class ReplayConflictError(ReplayError):
    """Same sender and id as a known message but different bytes: forgery or a producer bug."""

    code = "replay_conflict"


# ---- sending side -----------------------------------------------------------------------------


class InvalidSealInputError(EnvelopeError):
    """The caller asked to seal something v1 cannot carry (bad name, id length, key type...)."""

    code = "invalid_seal_input"


class NoRecipientKeyError(EnvelopeError):
    """The trust store holds no valid encryption certificate for that peer and suite."""

    code = "no_recipient_key"


# ---- trust material ---------------------------------------------------------------------------


class TrustStoreError(BrokerAdapterError):
    """Trust material could not be loaded; on reload the previous snapshot stays in force."""

    code = "trust_store"


# ---- what a remote party sees -------------------------------------------------------------------


class RejectedError(BrokerAdapterError):
    """The only answer a remote peer gets; the detailed reason stays local."""

    code = "rejected"

    def __init__(self, detail: str = "") -> None:
        # The detail is deliberately dropped: this object may be serialised back to a peer.
        del detail
        super().__init__()

    @classmethod
    def from_error(cls, error: BaseException) -> RejectedError:
        """Hide ``error`` behind the opaque answer (the caller logs ``error`` itself)."""
        del error
        return cls()
