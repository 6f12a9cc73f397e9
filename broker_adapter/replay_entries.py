"""The pure replay decision: entries, ``decide``, the ownership rule and the store protocol.

Every store applies exactly this decision (SQLite and memory call it, Redis mirrors it in Lua);
docs/replay.md explains the states, the expiry rule and the key layout.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from broker_adapter.errors import BrokerAdapterError

MSG_ID_BYTES = 16
# SHA-256(sender)[:8]: a collision also needs the same random 128-bit message id.
SENDER_HASH_BYTES = 8
KEY_BYTES = SENDER_HASH_BYTES + MSG_ID_BYTES
# 128 bits tell a redelivery from a conflict; both messages are signed by the same sender.
DIGEST_BYTES = 16
# The owner token only tells concurrent claimers of one key apart; it is not a secret.
TOKEN_BYTES = 8


class ReplayStoreError(BrokerAdapterError):
    """The replay store failed: no verdict on the message (not an ``EnvelopeError``), retry."""

    code = "replay_store_unavailable"


class EntryState(enum.IntEnum):
    IN_PROGRESS = 1
    DONE = 2


@dataclass(frozen=True, slots=True)
class Entry:
    """What a store remembers for one (sender, message id); live through ``expires_at_ms``.

    ``token`` and ``lease_until_ms`` (claim time + lease) only mean something while
    ``IN_PROGRESS``.
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
    lease_until_ms: int | None = None  # DUPLICATE_IN_PROGRESS: when the owner's lease ends
    response: bytes | None = None  # DUPLICATE_DONE: the cached response, if any


def is_expired(expires_at_ms: int, now_ms: int) -> bool:
    """Only strictly after ``expires_at_ms``: some replica may still accept the message then."""
    return expires_at_ms < now_ms


def decide(existing: Entry | None, digest: bytes, now_ms: int) -> Decision:
    """The replay decision for a message whose envelope digest is ``digest``, at ``now_ms``."""
    if existing is None or is_expired(existing.expires_at_ms, now_ms):
        # An expired entry's message can no longer pass the timestamp check.
        return Decision(DecisionKind.PROCESS_NEW)
    # Digest before state: other bytes under a known id conflict whether or not it finished.
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

    An expired lease may still complete while nobody reclaimed the key.
    """
    if existing is None or not may_release(existing, token, now_ms):
        return None
    return Entry(
        digest=existing.digest,
        state=EntryState.DONE,
        token=b"",
        lease_until_ms=0,
        expires_at_ms=existing.expires_at_ms,
        response=response,
    )


def may_release(existing: Entry | None, token: bytes, now_ms: int) -> bool:
    """Whether ``token`` still owns ``existing`` (and may complete or delete it)."""
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
    """Blocking, batch-shaped calls, each one store round, atomic per item (docs/replay.md).

    Answers come in the items' order; an item that fails alone gets its exception in its place,
    a failed round raises ``ReplayStoreError``. Safe to call from the event loop and the envelope
    thread at once.
    """

    def claim_many(
        self, items: Sequence[tuple[bytes, Entry]], now_ms: int
    ) -> list[Decision | Exception]:
        """Per (key, candidate): ``decide``, and store ``candidate`` if it claims, atomically."""
        ...

    def complete_many(
        self, items: Sequence[tuple[bytes, bytes, bytes | None]], now_ms: int
    ) -> list[bool | Exception]:
        """Per (key, token, response): apply ``completed_entry``; False if ownership is lost."""
        ...

    def release_many(
        self, items: Sequence[tuple[bytes, bytes]], now_ms: int
    ) -> list[bool | Exception]:
        """Per (key, token): delete the entry if ``may_release``; False otherwise."""
        ...

    def close(self) -> None: ...
