"""``EnvelopeCodec``: the envelope as a small encode/decode codec for the transport.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

from collections.abc import Callable

from broker_adapter.envelope import (
    EnvelopePolicy,
    OpenedMessage,
    SealedEnvelope,
    open_envelope,
    seal_envelope,
)
from broker_adapter.envelope_errors import OwnCertificateExpiredError, UnsupportedSuiteError
from broker_adapter.epoch import EpochKeyCache, EpochLimits, SenderEpochs
from broker_adapter.identity import LocalIdentity
from broker_adapter.suites import DEFAULT_SUITE_NAME, get_suite
from broker_adapter.trust_view import TrustView


class EnvelopeCodec:
    """Seal to a named peer and open what arrives, under one deployment policy."""

    def __init__(
        self,
        *,
        identity: LocalIdentity,
        trust: TrustView,
        policy: EnvelopePolicy,
        clock: Callable[[], int],
        rng: Callable[[int], bytes],
        suite: str = DEFAULT_SUITE_NAME,
        epoch_limits: EpochLimits | None = None,
        epochs: SenderEpochs | None = None,
        epoch_cache: EpochKeyCache | None = None,
    ) -> None:
        if suite not in policy.allowed_suites:
            # Sending with a suite we would refuse to receive is a configuration mistake.
            raise UnsupportedSuiteError(f"sending suite {suite!r} is not in the policy")
        self.identity = identity
        self.trust = trust
        self.policy = policy
        self.suite = get_suite(suite)
        self._clock = clock
        self._rng = rng
        if epochs is not None and epoch_limits is not None:
            raise ValueError("give either epochs or epoch_limits, not both")
        self.epochs = epochs if epochs is not None else SenderEpochs(epoch_limits)
        self.epoch_cache = epoch_cache if epoch_cache is not None else EpochKeyCache()

    def encode(
        self,
        *,
        recipient: str,
        msg_type: str,
        body: bytes,
        correlation_id: bytes | None = None,
    ) -> SealedEnvelope:
        """Seal ``body`` to the newest trusted encryption key of ``recipient``."""
        now = self._clock()
        expiry = self.identity.signing_not_after_ms
        if expiry is not None and now > expiry:
            raise OwnCertificateExpiredError(f"{self.identity.name}'s signing certificate")
        key = self.trust.encryption_key_for(recipient, self.suite, now)
        return seal_envelope(
            suite=self.suite,
            identity=self.identity,
            recipient=key,
            msg_type=msg_type,
            body=body,
            correlation_id=correlation_id,
            clock=self._clock,
            rng=self._rng,
            max_envelope_bytes=self.policy.max_envelope_bytes,
            epochs=self.epochs,
        )

    def decode(
        self,
        data: bytes,
        *,
        broker_user_id: str | None = None,
        expected_correlation_id: bytes | None = None,
    ) -> OpenedMessage:
        """Open ``data`` (checks 1-7); the replay decision stays with the caller."""
        return open_envelope(
            data,
            me=self.identity,
            trust=self.trust,
            now_ms=self._clock(),
            policy=self.policy,
            broker_user_id=broker_user_id,
            expected_correlation_id=expected_correlation_id,
            epoch_cache=self.epoch_cache,
        )
