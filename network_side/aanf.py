"""AAnF (AKMA Anchor Function) logic over an injected context store and clock. Pure.

Authorisation (who may ask, for which AF_ID, with which identity exposed) is decided by
``network_side.nef`` before anything here runs; this module only holds contexts and derives keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from akma_contract.messages import AkmaAfKeyData, AkmaAfKeyRequest, AkmaKeyInfo
from network_side.akid import parse_akid
from network_side.akma import derive_k_af, parse_af_id
from network_side.audit import AuditLog
from network_side.context_store import AkmaContext, ContextStore
from network_side.errors import ConfigError, ContextExpiredError, UnknownAkidError

__all__ = ["Aanf", "AanfConfig", "AfToNotify", "IdentityExposure", "RegisterOutcome"]


@dataclass(frozen=True)
class AanfConfig:
    """Lifetimes in milliseconds. A context lives ``context_lifetime_ms`` from registration
    (standing in for the K_AUSF lifetime the AUSF knows); a K_AF lives ``k_af_lifetime_ms`` from
    issue, cut short so that it never outlives its context."""

    context_lifetime_ms: int = 12 * 3600 * 1000
    k_af_lifetime_ms: int = 3600 * 1000

    def __post_init__(self) -> None:
        if self.context_lifetime_ms <= 0 or self.k_af_lifetime_ms <= 0:
            raise ConfigError("AKMA lifetimes must be positive")


class IdentityExposure(StrEnum):
    """Which UE identity a K_AF answer may carry (decided by the NEF policy)."""

    SUPI = "supi"
    GPSI = "gpsi"
    NONE = "none"


class AfToNotify(NamedTuple):
    """An AF that fetched a K_AF for ``a_kid`` and must learn that the context is gone."""

    af_identity: str
    a_kid: str


@dataclass(frozen=True)
class RegisterOutcome:
    a_kid: str
    replaced_a_kid: str | None
    #: AFs holding keys under the replaced context. Its K_AFs may not outlive it, so the service
    #: notifies these AFs exactly as for a removal.
    to_notify: tuple[AfToNotify, ...]


class Aanf:
    """``clock`` returns unix milliseconds; every time decision uses it, never the system clock."""

    def __init__(
        self,
        store: ContextStore,
        clock: Callable[[], int],
        config: AanfConfig | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._config = config or AanfConfig()
        self._audit = audit or AuditLog(clock)

    def register_anchor_key(self, info: AkmaKeyInfo) -> RegisterOutcome:
        """Naanf_AKMA_AnchorKey_Register: the SUPI's new context replaces any older one.

        Idempotent for a redelivered registration (same A-KID, same SUPI): the context is
        rewritten with a fresh lifetime and nothing is reported as replaced.
        """
        parse_akid(info.a_kid)  # Refuses a malformed A-KID before it can become a store key.
        now = self._clock()
        ctx = AkmaContext(
            a_kid=info.a_kid,
            supi=info.supi,
            gpsi=info.gpsi,
            k_akma=info.k_akma,
            created_at_ms=now,
            expires_at_ms=now + self._config.context_lifetime_ms,
        )
        put = self._store.put(ctx)
        to_notify = tuple(
            AfToNotify(af, put.replaced_a_kid)
            for af in sorted(put.replaced_fetchers)
            if put.replaced_a_kid is not None
        )
        self._audit.record(
            "anchor_key.register",
            "stored",
            a_kid=info.a_kid,
            replaced_a_kid=put.replaced_a_kid,
            has_gpsi=info.gpsi is not None,
            expires_at_ms=ctx.expires_at_ms,
            notified_afs=len(to_notify),
        )
        return RegisterOutcome(info.a_kid, put.replaced_a_kid, to_notify)

    def get_application_key(
        self,
        request: AkmaAfKeyRequest,
        requester: str,
        *,
        exposure: IdentityExposure = IdentityExposure.SUPI,
    ) -> AkmaAfKeyData:
        """Naanf_AKMA_ApplicationKey_Get (and its anonymous variant when ``anon_ind`` is set).

        Raises ``UnknownAkidError`` or ``ContextExpiredError`` (both ``NotFoundError``, answered
        as "no content"), ``InvalidAkidError`` or ``InvalidAfIdError`` for malformed input.
        """
        parse_akid(request.a_kid)
        parse_af_id(request.af_id)
        now = self._clock()
        ctx = self._store.get(request.a_kid)
        if ctx is None:
            raise UnknownAkidError("no AKMA context for this A-KID")
        if now >= ctx.expires_at_ms:
            raise ContextExpiredError("AKMA context expired")
        k_af = derive_k_af(ctx.k_akma, request.af_id)
        expiry_ms = min(now + self._config.k_af_lifetime_ms, ctx.expires_at_ms)
        supi = gpsi = None
        if not request.anon_ind:
            if exposure is IdentityExposure.SUPI:
                supi = ctx.supi
            elif exposure is IdentityExposure.GPSI:
                gpsi = ctx.gpsi
        # Recorded even for anonymous requests: that AF still holds a key to be told about.
        self._store.record_fetch(request.a_kid, requester, now)
        return AkmaAfKeyData(k_af=k_af, expiry_ms=expiry_ms, supi=supi, gpsi=gpsi)

    def remove_context(self, supi: str) -> list[AfToNotify]:
        """Naanf_AKMA_Context_Remove: delete the SUPI's context; return the AFs to notify.

        Removing a SUPI with no context is not an error (a redelivered removal must succeed).
        """
        removed = self._store.remove_by_supi(supi)
        to_notify = (
            [AfToNotify(af, removed.a_kid) for af in sorted(removed.fetchers)] if removed else []
        )
        self._audit.record(
            "context.remove",
            "removed" if removed else "absent",
            a_kid=removed.a_kid if removed else None,
            notified_afs=len(to_notify),
        )
        return to_notify

    def purge_expired(self) -> int:
        """Delete expired contexts (housekeeping; lookups already treat them as absent)."""
        count = self._store.purge_expired(self._clock())
        if count:
            self._audit.record("context.purge", "purged", count=count)
        return count
