"""NEF: the authorisation gate in front of the AAnF, and the message handlers built on it. Pure.

Every request, from an internal or an external AF, passes this one gate. TS 33.535 routes only
external AFs through a NEF; here the difference is kept as policy (identity exposure, from the
registry) rather than as two code paths that could drift apart.

``requester`` is always the identity the envelope proved (the verified signer), never a field of
the request body. Each authorisation decision and each outcome is written to the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from akma_contract.errors import InvalidAfIdError, InvalidRequestError
from akma_contract.messages import (
    AkmaAfKeyData,
    AkmaAfKeyRequest,
    AkmaKeyInfo,
    AkmaMessage,
    AnchorKeyRegistered,
    ContextRemovedNotification,
    ContextRemoveDone,
    CtxRemove,
    KeyNotFound,
    Rejected,
)
from network_side.aanf import Aanf, AfToNotify, IdentityExposure
from network_side.af_registry import AfKind, AfRegistry
from network_side.akma import parse_af_id
from network_side.audit import AuditLog
from network_side.errors import NotFoundError, StoreError

__all__ = ["Decision", "HandlerResult", "Nef", "Outcome", "TokenBucket"]


class TokenBucket:
    """Token bucket on an injected millisecond clock: ``burst`` tokens, refilled at ``rate``/s."""

    def __init__(self, rate_per_second: float, burst: int, now_ms: int) -> None:
        self.rate_per_ms = rate_per_second / 1000.0
        self.burst = burst
        self._tokens = float(burst)
        self._last_ms = now_ms

    def try_take(self, now_ms: int) -> bool:
        # A clock stepping backwards must not mint tokens, so negative elapsed time counts as 0.
        elapsed = max(0, now_ms - self._last_ms)
        self._last_ms = max(self._last_ms, now_ms)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_ms)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Outcome(StrEnum):
    ALLOWED = "allowed"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    INVALID_REQUEST = "invalid_request"


@dataclass(frozen=True)
class Decision:
    """The NEF's verdict on one request. ``reason`` is the detailed cause, for the audit log only;
    a refused requester learns no more than ``outcome``."""

    outcome: Outcome
    requester: str
    reason: str
    kind: AfKind | None = None
    exposure: IdentityExposure = IdentityExposure.NONE

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOWED


@dataclass(frozen=True)
class HandlerResult:
    """What the service sends: ``reply`` to the requester, then each notification to its AF."""

    reply: AkmaMessage
    notifications: tuple[tuple[str, ContextRemovedNotification], ...] = ()


def _notifications(
    to_notify: list[AfToNotify] | tuple[AfToNotify, ...],
) -> tuple[tuple[str, ContextRemovedNotification], ...]:
    return tuple(
        (n.af_identity, ContextRemovedNotification(a_kid=n.a_kid, reason="removed"))
        for n in to_notify
    )


class Nef:
    def __init__(
        self,
        registry: AfRegistry,
        aanf: Aanf,
        clock: Callable[[], int],
        audit: AuditLog | None = None,
    ) -> None:
        self._registry = registry
        self._aanf = aanf
        self._clock = clock
        self._audit = audit or AuditLog(clock)
        self._buckets: dict[str, TokenBucket] = {}

    # ---- decisions ----------------------------------------------------------------------------

    def authorise_key_request(self, requester: str, request: AkmaAfKeyRequest) -> Decision:
        """Decide whether ``requester`` may have a K_AF for ``request.af_id``, and with which
        identity. Checks run cheapest first: known AF, rate limit, AF_ID well-formed, AF_ID owned
        by the requester."""
        decision = self._decide_key_request(requester, request)
        self._audit.record(
            "af_key.authorise",
            decision.outcome.value,
            requester=requester,
            reason=decision.reason,
            a_kid=request.a_kid,
            af_id_fqdn=_fqdn_or_none(request.af_id),
            ua_protocol_id=request.af_id[-5:].hex(),
            anon=request.anon_ind,
            af_kind=decision.kind.value if decision.kind else None,
            exposure=decision.exposure.value,
        )
        return decision

    def _decide_key_request(self, requester: str, request: AkmaAfKeyRequest) -> Decision:
        entry = self._registry.get(requester)
        if entry is None:
            return Decision(Outcome.UNAUTHORIZED, requester, "unknown_requester")
        if not self._take_token(requester, entry.rate_per_second, entry.burst):
            return Decision(Outcome.RATE_LIMITED, requester, "rate_limited", entry.kind)
        try:
            parse_af_id(request.af_id)
        except InvalidAfIdError as exc:
            return Decision(Outcome.INVALID_REQUEST, requester, exc.code, entry.kind)
        if request.af_id not in entry.af_ids:
            return Decision(Outcome.UNAUTHORIZED, requester, "af_id_not_owned", entry.kind)
        if request.anon_ind:
            exposure = IdentityExposure.NONE
        elif entry.kind is AfKind.INTERNAL:
            exposure = IdentityExposure.SUPI
        else:
            # An external AF never receives a SUPI, whatever else happens (TS 33.535).
            exposure = IdentityExposure.GPSI
        return Decision(Outcome.ALLOWED, requester, "ok", entry.kind, exposure)

    def _take_token(self, requester: str, rate: float, burst: int) -> bool:
        now = self._clock()
        bucket = self._buckets.get(requester)
        if bucket is None or bucket.rate_per_ms != rate / 1000.0 or bucket.burst != burst:
            bucket = self._buckets[requester] = TokenBucket(rate, burst, now)
        return bucket.try_take(now)

    def authorise_ausf(self, requester: str, operation: str) -> Decision:
        """Only identities listed as AUSF may register anchor keys or remove contexts."""
        if requester in self._registry.ausf_identities:
            decision = Decision(Outcome.ALLOWED, requester, "ok")
        else:
            decision = Decision(Outcome.UNAUTHORIZED, requester, "not_ausf")
        self._audit.record(
            f"{operation}.authorise",
            decision.outcome.value,
            requester=requester,
            reason=decision.reason,
        )
        return decision

    # ---- handlers: one request in, a reply (and notifications) out ------------------------------

    def handle_key_request(self, requester: str, request: AkmaAfKeyRequest) -> HandlerResult:
        decision = self.authorise_key_request(requester, request)
        if not decision.allowed:
            return HandlerResult(_rejected(decision.outcome))
        outcome, reason = "issued", "ok"
        reply: AkmaMessage
        try:
            data: AkmaAfKeyData = self._aanf.get_application_key(
                request, requester, exposure=decision.exposure
            )
            reply = data
        except NotFoundError as exc:
            outcome, reason, reply = "not_found", exc.code, KeyNotFound()
        except InvalidRequestError as exc:
            outcome, reason, reply = "invalid_request", exc.code, Rejected(reason="invalid_request")
        except StoreError as exc:
            # Our fault, not the AF's: audit it and let the service's failure path handle it.
            self._audit.record("af_key.get", "error", requester=requester, reason=exc.code)
            raise
        self._audit.record(
            "af_key.get",
            outcome,
            requester=requester,
            reason=reason,
            a_kid=request.a_kid,
            expiry_ms=reply.expiry_ms if isinstance(reply, AkmaAfKeyData) else None,
            identity=_identity_kind(reply),
        )
        return HandlerResult(reply)

    def handle_register(self, requester: str, info: AkmaKeyInfo) -> HandlerResult:
        if not self.authorise_ausf(requester, "anchor_key.register").allowed:
            return HandlerResult(Rejected(reason="unauthorized"))
        try:
            registered = self._aanf.register_anchor_key(info)
        except InvalidRequestError as exc:
            self._audit.record("anchor_key.register", "invalid_request", reason=exc.code)
            return HandlerResult(Rejected(reason="invalid_request"))
        return HandlerResult(
            AnchorKeyRegistered(a_kid=registered.a_kid), _notifications(registered.to_notify)
        )

    def handle_ctx_remove(self, requester: str, msg: CtxRemove) -> HandlerResult:
        if not self.authorise_ausf(requester, "context.remove").allowed:
            return HandlerResult(Rejected(reason="unauthorized"))
        return HandlerResult(
            ContextRemoveDone(), _notifications(self._aanf.remove_context(msg.supi))
        )

    def handle(self, requester: str, message: AkmaMessage) -> HandlerResult:
        """Dispatch any decoded request; a message that is not a request is refused."""
        if isinstance(message, AkmaAfKeyRequest):
            return self.handle_key_request(requester, message)
        if isinstance(message, AkmaKeyInfo):
            return self.handle_register(requester, message)
        if isinstance(message, CtxRemove):
            return self.handle_ctx_remove(requester, message)
        self._audit.record(
            "request",
            "invalid_request",
            requester=requester,
            reason="not_a_request",
            msg_type=message.MSG_TYPE,
        )
        return HandlerResult(Rejected(reason="invalid_request"))


def _rejected(outcome: Outcome) -> Rejected:
    if outcome is Outcome.RATE_LIMITED:
        return Rejected(reason="rate_limited")
    if outcome is Outcome.INVALID_REQUEST:
        return Rejected(reason="invalid_request")
    return Rejected(reason="unauthorized")


def _fqdn_or_none(af_id: bytes) -> str | None:
    try:
        return parse_af_id(af_id)[0]
    except InvalidAfIdError:
        return None


def _identity_kind(reply: AkmaMessage) -> str | None:
    if not isinstance(reply, AkmaAfKeyData):
        return None
    return "supi" if reply.supi else "gpsi" if reply.gpsi else "none"
