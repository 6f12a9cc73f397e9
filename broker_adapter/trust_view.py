"""What the pure envelope core needs from a trust store, as protocols.

Design notes: docs/architecture.md (Module notes).
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
