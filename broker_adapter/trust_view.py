"""What the pure envelope core needs from a trust store, as protocols.

``EnvelopeCodec`` only looks keys up: the signer's key by key id (``SignerDirectory``, the
protocol ``open_envelope`` already takes) and a peer's encryption key by name
(``RecipientDirectory``). ``TrustView`` is both. ``broker_adapter.trust.TrustStore`` satisfies
it, but the core never imports that module, which reads files and is reloaded from a thread;
tests and tools can pass an in-memory view instead.
"""

from __future__ import annotations

from typing import Protocol

from broker_adapter.envelope import SignerDirectory, VerifiedSigner
from broker_adapter.identity import RecipientKey
from broker_adapter.suites import Suite


class RecipientDirectory(Protocol):
    """Whom a sealer may encrypt to (``TrustStore`` fits)."""

    def encryption_key_for(self, identity: str, suite: Suite, now_ms: int) -> RecipientKey: ...


class TrustView(SignerDirectory, RecipientDirectory, Protocol):
    """Everything ``EnvelopeCodec`` asks of the trust store: both directories."""


__all__ = ["RecipientDirectory", "SignerDirectory", "TrustView", "VerifiedSigner"]
