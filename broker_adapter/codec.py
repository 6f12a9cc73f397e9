"""``EnvelopeCodec``: the envelope as a small encode/decode codec for the transport.

It only holds what every call would otherwise repeat (our identity, the trust store, the
policy, the clock and the randomness) and delegates to ``broker_adapter.envelope``. It stays
pure: the clock and the random source are injected, the trust store is consulted in memory.
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
from broker_adapter.envelope_errors import UnsupportedSuiteError
from broker_adapter.identity import LocalIdentity
from broker_adapter.suites import DEFAULT_SUITE_NAME, get_suite
from broker_adapter.trust import TrustStore


class EnvelopeCodec:
    """Seal to a named peer and open what arrives, under one deployment policy."""

    def __init__(
        self,
        *,
        identity: LocalIdentity,
        trust: TrustStore,
        policy: EnvelopePolicy,
        clock: Callable[[], int],
        rng: Callable[[int], bytes],
        suite: str = DEFAULT_SUITE_NAME,
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

    def encode(
        self,
        *,
        recipient: str,
        msg_type: str,
        body: bytes,
        correlation_id: bytes | None = None,
    ) -> SealedEnvelope:
        """Seal ``body`` to the newest trusted encryption key of ``recipient``."""
        key = self.trust.encryption_key_for(recipient, self.suite, self._clock())
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
        )
