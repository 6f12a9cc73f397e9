"""Replay guard: check 8 of opening a message, keyed by (sender, message id) and the digest.

``ReplayGuard`` combines the pure decision (``broker_adapter.replay_entries``, re-exported here)
with an injected store, clock and token source; docs/replay.md explains it.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from broker_adapter.envelope_errors import (
    EnvelopeError,
    FromFutureError,
    ReplayConflictError,
    StaleMessageError,
)
from broker_adapter.replay_entries import (
    DIGEST_BYTES,
    KEY_BYTES,
    MSG_ID_BYTES,
    TOKEN_BYTES,
    Decision,
    DecisionKind,
    Entry,
    EntryState,
    ReplayStore,
    ReplayStoreError,
    completed_entry,
    decide,
    is_expired,
    may_release,
    replay_key,
)

__all__ = [
    "DIGEST_BYTES",
    "KEY_BYTES",
    "MSG_ID_BYTES",
    "TOKEN_BYTES",
    "Claim",
    "ClaimOutcome",
    "ClaimRequest",
    "Decision",
    "DecisionKind",
    "Entry",
    "EntryState",
    "ReplayConflictError",
    "ReplayGuard",
    "ReplayStore",
    "ReplayStoreError",
    "completed_entry",
    "decide",
    "is_expired",
    "may_release",
    "replay_key",
]


class ClaimOutcome(enum.Enum):
    """What the consumer does next (see docs/replay.md)."""

    # Run the handler, then ``complete`` (or ``release`` on a transient failure), then ack.
    PROCESS = "process"
    # Ack without running the handler; re-send ``cached_response`` if there is one.
    DUPLICATE_DONE = "duplicate_done"
    # Someone else holds a live lease: neither run nor ack; claim again after ``retry_after_ms``.
    DUPLICATE_IN_PROGRESS = "duplicate_in_progress"


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What the guard needs of an opened message to claim it."""

    sender: str
    msg_id: bytes
    digest: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    sender: str
    msg_id: bytes
    key: bytes
    # Set only for PROCESS: proves ownership to ``complete`` and ``release``.
    token: bytes | None = None
    # PROCESS after a previous owner's lease expired (worth a metric: a worker probably died).
    reclaimed: bool = False
    cached_response: bytes | None = None
    retry_after_ms: int | None = None


class ReplayGuard:
    """Claims, completes and releases messages against a ``ReplayStore``.

    ``window_ms`` and ``skew_ms`` must be the envelope policy's; an entry lives through
    ``timestamp + window + 2 * skew`` inclusive (docs/replay.md, Expiry). Methods are blocking
    and batch-shaped, answers in the items' places; an empty batch touches neither store nor
    clock. Clock and token source must be safe on whichever thread calls the guard.
    """

    def __init__(
        self,
        store: ReplayStore,
        *,
        window_ms: int,
        skew_ms: int,
        in_progress_lease_ms: int,
        clock: Callable[[], int],
        token_source: Callable[[], bytes] | None = None,
    ) -> None:
        if window_ms <= 0 or skew_ms < 0 or in_progress_lease_ms <= 0:
            raise ValueError("window and lease must be positive and skew non-negative")
        self._store = store
        self._window_ms = window_ms
        self._skew_ms = skew_ms
        self._lease_ms = in_progress_lease_ms
        self._clock = clock
        self._token_source = token_source or _random_token

    @property
    def entry_lifetime_ms(self) -> int:
        """How long after its timestamp an entry is kept: window + 2 x skew."""
        return self._window_ms + 2 * self._skew_ms

    def claim(self, requests: Sequence[ClaimRequest]) -> list[Claim | Exception]:
        """Claim messages that passed envelope checks 1-7, in one store round.

        Per request: a ``Claim``, or that message's own ``ReplayConflictError``,
        ``StaleMessageError``/``FromFutureError`` (outside the replay horizon), ``ValueError``
        or ``ReplayStoreError``. Raises ``ReplayStoreError`` if the whole round failed.
        """
        if not requests:
            return []
        now = self._clock()
        out, prepared = self._prepare(requests, now)
        if prepared:
            decisions = self._store.claim_many([(k, c) for _, k, c in prepared], now)
            self._finish(out, prepared, decisions, requests, now)
        return [r for r in out if r is not None]

    def _prepare(
        self, requests: Sequence[ClaimRequest], now: int
    ) -> tuple[list[Claim | Exception | None], list[tuple[int, bytes, Entry]]]:
        out: list[Claim | Exception | None] = [None] * len(requests)
        prepared: list[tuple[int, bytes, Entry]] = []
        for i, request in enumerate(requests):
            try:
                key, candidate = self._candidate(request, now)
            except (EnvelopeError, ValueError) as exc:
                out[i] = exc
                continue
            prepared.append((i, key, candidate))
        return out, prepared

    def _finish(
        self,
        out: list[Claim | Exception | None],
        prepared: list[tuple[int, bytes, Entry]],
        decisions: Sequence[Decision | Exception],
        requests: Sequence[ClaimRequest],
        now: int,
    ) -> None:
        for (i, key, candidate), decision in zip(prepared, decisions, strict=True):
            if isinstance(decision, Exception):
                out[i] = decision
                continue
            try:
                out[i] = self._claim_from(decision, requests[i], key, candidate.token, now)
            except (ReplayConflictError, ReplayStoreError) as exc:
                out[i] = exc

    def _candidate(self, request: ClaimRequest, now: int) -> tuple[bytes, Entry]:
        key = replay_key(request.sender, request.msg_id)
        expires_at = request.timestamp_ms + self.entry_lifetime_ms
        # In case check 7 was skipped: an entry born expired would let the bytes in again, and
        # a far-future one would pin memory for as long as the sender likes.
        if is_expired(expires_at, now):
            raise StaleMessageError("timestamp older than the replay horizon")
        if request.timestamp_ms > now + 2 * self._skew_ms:
            raise FromFutureError("timestamp beyond the replay horizon")
        if len(request.digest) < DIGEST_BYTES:
            raise ValueError(f"digest must be at least {DIGEST_BYTES} bytes")
        token = self._token_source()
        if len(token) != TOKEN_BYTES:
            # Stores rely on the fixed size (the Redis value layout slices it by position).
            raise ValueError(f"token source must return {TOKEN_BYTES} bytes")
        return key, Entry(
            digest=request.digest[:DIGEST_BYTES],
            state=EntryState.IN_PROGRESS,
            token=token,
            lease_until_ms=now + self._lease_ms,
            expires_at_ms=expires_at,
        )

    @staticmethod
    def _claim_from(
        decision: Decision, request: ClaimRequest, key: bytes, token: bytes, now: int
    ) -> Claim:
        kind = decision.kind
        sender, msg_id = request.sender, request.msg_id
        if kind is DecisionKind.CONFLICT:
            raise ReplayConflictError(f"sender {sender!r} reused message id {msg_id.hex()}")
        if kind.claims:
            return Claim(
                ClaimOutcome.PROCESS,
                sender,
                msg_id,
                key,
                token=token,
                reclaimed=kind is DecisionKind.PROCESS_RECLAIMED,
            )
        if kind is DecisionKind.DUPLICATE_DONE:
            return Claim(
                ClaimOutcome.DUPLICATE_DONE, sender, msg_id, key, cached_response=decision.response
            )
        if decision.lease_until_ms is None:
            raise ReplayStoreError("replay store: an in-progress entry without a lease")
        retry_after = max(1, decision.lease_until_ms - now)
        return Claim(
            ClaimOutcome.DUPLICATE_IN_PROGRESS, sender, msg_id, key, retry_after_ms=retry_after
        )

    def complete(self, items: Sequence[tuple[Claim, bytes | None]]) -> list[bool | Exception]:
        """Mark each (claim, response) DONE, caching ``response`` (the sealed reply, or None).

        False where the claim lost ownership (the other worker's result is remembered).
        ``ValueError`` for a claim that is not PROCESS, before the store is touched;
        ``ReplayStoreError`` if the round failed.
        """
        if not items:
            return []
        keyed = [(claim.key, _owner_token(claim), response) for claim, response in items]
        return self._store.complete_many(keyed, self._clock())

    def release(self, claims: Sequence[Claim]) -> list[bool | Exception]:
        """Forget IN_PROGRESS claims after a transient failure, so a redelivery processes them;
        answers and errors as for ``complete``."""
        if not claims:
            return []
        keyed = [(claim.key, _owner_token(claim)) for claim in claims]
        return self._store.release_many(keyed, self._clock())


def _owner_token(claim: Claim) -> bytes:
    if claim.outcome is not ClaimOutcome.PROCESS or claim.token is None:
        raise ValueError("only a PROCESS claim can be completed or released")
    return claim.token


def _random_token() -> bytes:
    return secrets.token_bytes(TOKEN_BYTES)
