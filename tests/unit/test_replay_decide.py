"""The pure replay decision, case by case, including every boundary of expiry and lease."""

from __future__ import annotations

import pytest

from broker_adapter.replay import (
    Decision,
    DecisionKind,
    Entry,
    EntryState,
    completed_entry,
    decide,
    is_expired,
    may_release,
    replay_key,
)

D1 = b"\x01" * 16
D2 = b"\x02" * 16
TOKEN = b"T" * 8
OTHER_TOKEN = b"U" * 8
NOW = 10_000


def in_progress(*, lease_until: int = NOW + 100, expires_at: int = NOW + 1_000) -> Entry:
    return Entry(D1, EntryState.IN_PROGRESS, TOKEN, lease_until, expires_at)


def done(response: bytes | None = None, *, expires_at: int = NOW + 1_000) -> Entry:
    return Entry(D1, EntryState.DONE, b"", 0, expires_at, response)


@pytest.mark.parametrize(
    ("existing", "digest", "expected"),
    [
        # Nothing known: a new message.
        (None, D1, Decision(DecisionKind.PROCESS_NEW)),
        # Expired entries count as absent, whatever their state or digest; an entry expires
        # only strictly after its expires_at.
        (in_progress(expires_at=NOW - 1), D1, Decision(DecisionKind.PROCESS_NEW)),
        (in_progress(expires_at=NOW - 1), D2, Decision(DecisionKind.PROCESS_NEW)),
        (done(b"r", expires_at=NOW - 1), D1, Decision(DecisionKind.PROCESS_NEW)),
        (done(expires_at=NOW - 1), D2, Decision(DecisionKind.PROCESS_NEW)),
        # At its expires_at instant the entry still counts: a replica a skew ahead reaches it
        # while another still accepts the message.
        (done(b"r", expires_at=NOW), D1, Decision(DecisionKind.DUPLICATE_DONE, response=b"r")),
        (done(expires_at=NOW), D2, Decision(DecisionKind.CONFLICT)),
        (
            in_progress(expires_at=NOW),
            D1,
            Decision(DecisionKind.DUPLICATE_IN_PROGRESS, lease_until_ms=NOW + 100),
        ),
        # Other bytes under a live id: conflict, in either state, even with a dead lease.
        (in_progress(), D2, Decision(DecisionKind.CONFLICT)),
        (in_progress(lease_until=NOW - 1), D2, Decision(DecisionKind.CONFLICT)),
        (done(), D2, Decision(DecisionKind.CONFLICT)),
        (done(b"resp"), D2, Decision(DecisionKind.CONFLICT)),
        # Same bytes, finished: a duplicate carrying the cached response if any.
        (done(), D1, Decision(DecisionKind.DUPLICATE_DONE)),
        (done(b"resp"), D1, Decision(DecisionKind.DUPLICATE_DONE, response=b"resp")),
        (done(b""), D1, Decision(DecisionKind.DUPLICATE_DONE, response=b"")),
        # Same bytes, someone holds a live lease (lease end exclusive).
        (
            in_progress(lease_until=NOW + 1),
            D1,
            Decision(DecisionKind.DUPLICATE_IN_PROGRESS, lease_until_ms=NOW + 1),
        ),
        # Same bytes, lease over: the owner is presumed dead, process again.
        (in_progress(lease_until=NOW), D1, Decision(DecisionKind.PROCESS_RECLAIMED)),
        (in_progress(lease_until=NOW - 500), D1, Decision(DecisionKind.PROCESS_RECLAIMED)),
    ],
)
def test_decide(existing: Entry | None, digest: bytes, expected: Decision) -> None:
    assert decide(existing, digest, NOW) == expected


def test_only_process_decisions_claim() -> None:
    assert {k for k in DecisionKind if k.claims} == {
        DecisionKind.PROCESS_NEW,
        DecisionKind.PROCESS_RECLAIMED,
    }


def test_completed_entry_by_owner_keeps_digest_and_expiry() -> None:
    entry = in_progress(lease_until=NOW - 1)  # an expired lease nobody reclaimed still counts
    result = completed_entry(entry, TOKEN, b"resp", NOW)
    assert result == Entry(D1, EntryState.DONE, b"", 0, entry.expires_at_ms, b"resp")


@pytest.mark.parametrize(
    "existing",
    [
        None,
        in_progress(expires_at=NOW - 1),  # expired
        done(),  # already finished
        Entry(D1, EntryState.IN_PROGRESS, OTHER_TOKEN, NOW + 100, NOW + 1_000),  # reclaimed
    ],
)
def test_completed_entry_and_release_refused_without_ownership(existing: Entry | None) -> None:
    assert completed_entry(existing, TOKEN, None, NOW) is None
    assert not may_release(existing, TOKEN, NOW)


def test_release_allowed_for_owner() -> None:
    assert may_release(in_progress(), TOKEN, NOW)


def test_ownership_lasts_through_the_expiry_instant() -> None:
    entry = in_progress(expires_at=NOW)
    assert may_release(entry, TOKEN, NOW)
    assert completed_entry(entry, TOKEN, None, NOW) is not None
    assert not may_release(entry, TOKEN, NOW + 1)
    assert completed_entry(entry, TOKEN, None, NOW + 1) is None


def test_is_expired_only_strictly_after() -> None:
    assert not is_expired(NOW, NOW - 1)
    assert not is_expired(NOW, NOW)
    assert is_expired(NOW, NOW + 1)


def test_replay_key_is_compact_and_separates_senders() -> None:
    msg_id = bytes(range(16))
    key = replay_key("af1.example.com", msg_id)
    assert len(key) == 24 and key.endswith(msg_id)
    assert key != replay_key("af2.example.com", msg_id)
    assert key == replay_key("af1.example.com", msg_id)
    with pytest.raises(ValueError):
        replay_key("af1.example.com", b"short")
