"""Replay guard: step 8 of opening a message, keyed by (sender, message id) with the envelope digest.

RabbitMQ delivers at least once: requeues, dead-lettering, competing consumers and producer
retries all mean the same message can arrive again, in any order. Sequence windows (IPsec, DTLS)
assume order, so we remember each (sender, message id) for as long as its timestamp can still pass
the envelope's window check, together with a digest of the exact envelope bytes and a state:

- ``IN_PROGRESS`` with an owner token and a lease: one worker is processing it right now;
- ``DONE``: processed; the sealed response is cached for requests so it can be sent again.

This module is pure: the decision (``decide``) is a function of the stored entry, the digest and
the time, and ``ReplayGuard`` only combines it with an injected store, clock and token source.
The stores in ``broker_adapter.replay_stores`` make a claim atomic and apply exactly the same
decision (the SQLite and memory stores call ``decide``; the Redis store mirrors it in Lua). The
ownership rule of completing and releasing is ``completed_entry`` / ``may_release`` in the memory
store, a WHERE clause in SQLite and a test in Lua; the contract tests hold all three alike.

Stores and the guard are blocking and batch-shaped: every call takes a batch and is one store
round. Where a call runs (the event loop or a worker thread) is the caller's choice; the caller
also guarantees that calls into one store never overlap.

An entry is live through its ``expires_at_ms`` inclusive and expired only when ``now`` is strictly
later (``is_expired``): see ``ReplayGuard`` for why that last instant matters.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from broker_adapter.envelope_errors import (
    EnvelopeError,
    FromFutureError,
    ReplayConflictError,
    StaleMessageError,
)
from broker_adapter.errors import BrokerAdapterError

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

MSG_ID_BYTES = 16
# The sender is folded into 8 bytes of SHA-256. Two senders would have to share those 64 bits
# AND reuse the same 128-bit random message id to collide, and sender names come from the
# deployment's own certificates, so the shorter key costs nothing and saves store space.
SENDER_HASH_BYTES = 8
KEY_BYTES = SENDER_HASH_BYTES + MSG_ID_BYTES
# Only 128 bits of the envelope digest are kept. The digest tells a redelivery (same bytes) from
# a conflict (other bytes). Both messages have passed signature verification, so only the signer
# itself could try to build two envelopes with the same id and the same truncated digest, and all
# it would gain is that its second message is acknowledged without being processed.
DIGEST_BYTES = 16
# The owner token only has to tell concurrent claimers of one key apart; it is not a secret.
TOKEN_BYTES = 8


class ReplayStoreError(BrokerAdapterError):
    """The replay store could not be read or written: say nothing about the message, retry later.

    This is an infrastructure failure, not a verdict on the message, so it is deliberately not an
    ``EnvelopeError``: the consumer must not dead-letter the message because of it.
    """

    code = "replay_store_unavailable"


class EntryState(enum.IntEnum):
    IN_PROGRESS = 1
    DONE = 2


@dataclass(frozen=True, slots=True)
class Entry:
    """What a store remembers for one (sender, message id).

    ``lease_until_ms`` (claim time + lease) is stored instead of the claim time so that the
    decision needs no configuration; ``token`` and ``lease_until_ms`` only mean something while
    the entry is ``IN_PROGRESS``. The entry is live through ``expires_at_ms`` inclusive.
    """

    digest: bytes
    state: EntryState
    token: bytes
    lease_until_ms: int
    expires_at_ms: int
    response: bytes | None = None


class DecisionKind(enum.Enum):
    PROCESS_NEW = "process_new"
    # The previous owner's lease ran out without a result: assume the worker died.
    PROCESS_RECLAIMED = "process_reclaimed"
    DUPLICATE_DONE = "duplicate_done"
    DUPLICATE_IN_PROGRESS = "duplicate_in_progress"
    CONFLICT = "conflict"

    @property
    def claims(self) -> bool:
        """Whether the store must write the candidate entry (the caller now owns the key)."""
        return self in (DecisionKind.PROCESS_NEW, DecisionKind.PROCESS_RECLAIMED)


@dataclass(frozen=True, slots=True)
class Decision:
    kind: DecisionKind
    # For DUPLICATE_IN_PROGRESS: when the current owner's lease ends.
    lease_until_ms: int | None = None
    # For DUPLICATE_DONE: the cached response, if the finished message had one.
    response: bytes | None = None


def is_expired(expires_at_ms: int, now_ms: int) -> bool:
    """Whether an entry that expires at ``expires_at_ms`` is gone at ``now_ms``: only strictly
    after it, because ``expires_at_ms`` is the last instant some replica may still accept the
    message (``ReplayGuard``)."""
    return expires_at_ms < now_ms


def decide(existing: Entry | None, digest: bytes, now_ms: int) -> Decision:
    """The replay decision for a message whose envelope digest is ``digest``, at ``now_ms``.

    The digest is compared before the state on purpose: other bytes under a known id are a
    conflict whether or not the first message has finished.
    """
    if existing is None or is_expired(existing.expires_at_ms, now_ms):
        # An expired entry not yet purged is the same as no entry: its message could no longer
        # pass the timestamp check, so nothing that reaches this point can be its replay.
        return Decision(DecisionKind.PROCESS_NEW)
    if not secrets.compare_digest(existing.digest, digest):
        return Decision(DecisionKind.CONFLICT)
    if existing.state is EntryState.DONE:
        return Decision(DecisionKind.DUPLICATE_DONE, response=existing.response)
    if existing.lease_until_ms > now_ms:
        return Decision(DecisionKind.DUPLICATE_IN_PROGRESS, lease_until_ms=existing.lease_until_ms)
    return Decision(DecisionKind.PROCESS_RECLAIMED)


def completed_entry(
    existing: Entry | None, token: bytes, response: bytes | None, now_ms: int
) -> Entry | None:
    """The DONE entry that replaces ``existing``, or None if ``token`` no longer owns it.

    An owner whose lease ran out may still complete as long as nobody reclaimed the key:
    recording the result is strictly better than letting a redelivery process it again.
    """
    if not _owned_by(existing, token, now_ms):
        return None
    assert existing is not None
    return Entry(
        digest=existing.digest,
        state=EntryState.DONE,
        token=b"",
        lease_until_ms=0,
        expires_at_ms=existing.expires_at_ms,
        response=response,
    )


def may_release(existing: Entry | None, token: bytes, now_ms: int) -> bool:
    """Whether ``token`` still owns ``existing`` and may therefore delete it."""
    return _owned_by(existing, token, now_ms)


def _owned_by(existing: Entry | None, token: bytes, now_ms: int) -> bool:
    return (
        existing is not None
        and not is_expired(existing.expires_at_ms, now_ms)
        and existing.state is EntryState.IN_PROGRESS
        and secrets.compare_digest(existing.token, token)
    )


def replay_key(sender: str, msg_id: bytes) -> bytes:
    """The compact store key of (sender, message id): SHA-256(sender)[:8] || msg_id."""
    if len(msg_id) != MSG_ID_BYTES:
        raise ValueError(f"message id must be {MSG_ID_BYTES} bytes, got {len(msg_id)}")
    return hashlib.sha256(sender.encode("utf-8")).digest()[:SENDER_HASH_BYTES] + msg_id


class ReplayStore(Protocol):
    """Where entries live: blocking, batch-shaped calls, each one store round (one transaction,
    one pipeline or script call) that is atomic per item with respect to other guards.

    Answers come in the items' order. An item that fails alone gets its exception in its place;
    a failure of the whole round raises ``ReplayStoreError`` and the caller treats every item as
    not done (a Redis round that timed out may still have claimed some keys: their redeliveries
    wait for the lease, then reclaim). The caller never overlaps two calls into one store, so a
    store needs no locking of its own.
    """

    def claim_many(
        self, items: Sequence[tuple[bytes, Entry]], now_ms: int
    ) -> list[Decision | Exception]:
        """For each (key, candidate): apply ``decide(existing, candidate.digest, now_ms)`` and,
        if it claims, store ``candidate`` in place of the existing entry, atomically."""
        ...

    def complete_many(
        self, items: Sequence[tuple[bytes, bytes, bytes | None]], now_ms: int
    ) -> list[bool | Exception]:
        """For each (key, token, response): replace the entry by ``completed_entry(...)``;
        False where ``token`` lost ownership."""
        ...

    def release_many(
        self, items: Sequence[tuple[bytes, bytes]], now_ms: int
    ) -> list[bool | Exception]:
        """For each (key, token): delete the entry if ``may_release(...)``; False otherwise."""
        ...

    def close(self) -> None: ...


class ClaimOutcome(enum.Enum):
    """What the consumer does next (see docs/replay.md)."""

    # Run the handler, then ``complete`` (or ``release`` on a transient failure), then ack.
    PROCESS = "process"
    # Ack without running the handler; re-send ``cached_response`` if there is one.
    DUPLICATE_DONE = "duplicate_done"
    # Someone else holds a live lease: do not run the handler and do not ack blindly; claim again
    # after ``retry_after_ms`` (see docs/replay.md for why neither a plain ack nor an immediate
    # requeue is right).
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

    ``window_ms`` and ``skew_ms`` must be the values the envelope's timestamp check uses: a
    message is accepted while ``now - skew <= timestamp + window`` and ``timestamp <= now + skew``.
    An entry therefore lives through ``timestamp + window + 2 * skew`` inclusive: one skew for the
    accepted lateness, one more for replicas whose clocks disagree by up to ``skew``. A replica
    whose clock is ``skew`` ahead of another reaches that instant exactly when the other still
    accepts the message, so the entry must still count (and survive purges) at that instant.

    Every method is blocking and takes a batch; the answer to each item is in its place. An empty
    batch returns ``[]`` without calling the store or the clock. The clock and the token source
    must be safe to call from whichever thread calls the guard (the system clock and ``secrets``
    are).
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
        """Decide what to do with messages that passed envelope checks 1-7, in one store round.

        Each answer is in its request's place: a ``Claim``, or the exception that message alone
        raises: ``ReplayConflictError`` for a known id with other bytes, ``StaleMessageError`` or
        ``FromFutureError`` if the timestamp is outside what the guard can remember (the
        envelope check should already have refused it), ``ValueError`` for a malformed request,
        or ``ReplayStoreError`` from a store that fails a single item (the memory store when
        full). Raises ``ReplayStoreError`` if the store round as a whole failed: treat every
        message as not claimed.
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
            except ReplayConflictError as exc:
                out[i] = exc

    def _candidate(self, request: ClaimRequest, now: int) -> tuple[bytes, Entry]:
        key = replay_key(request.sender, request.msg_id)
        expires_at = request.timestamp_ms + self.entry_lifetime_ms
        # Defence in depth against a caller that skipped or misconfigured check 7: an entry
        # born expired would let the same bytes be processed again, and a far-future timestamp
        # would pin an entry (and memory) for as long as the sender likes.
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
        assert decision.lease_until_ms is not None
        return Claim(
            ClaimOutcome.DUPLICATE_IN_PROGRESS,
            sender,
            msg_id,
            key,
            retry_after_ms=max(1, decision.lease_until_ms - now),
        )

    def complete(self, items: Sequence[tuple[Claim, bytes | None]]) -> list[bool | Exception]:
        """Mark each (claim, response) DONE, caching ``response`` (the sealed reply, or None).

        False in an item's place when that claim lost ownership (its lease expired and another
        worker reclaimed the key, or the entry expired): the handler's effects stand, since
        handlers are idempotent, but the other worker's result is the one remembered. Raises
        ``ValueError`` (before touching the store) if a claim is not a PROCESS claim, and
        ``ReplayStoreError`` if the store round failed.
        """
        if not items:
            return []
        keyed = [(claim.key, _owner_token(claim), response) for claim, response in items]
        return self._store.complete_many(keyed, self._clock())

    def release(self, claims: Sequence[Claim]) -> list[bool | Exception]:
        """Forget IN_PROGRESS claims after a transient failure, so a redelivery processes them.

        False where the claim no longer owns its entry; ``ValueError`` and ``ReplayStoreError``
        as for ``complete``.
        """
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
