"""Behaviour every replay store must share, run through ``ReplayGuard``.

``StoreContract`` is subclassed once per store (memory, SQLite, Redis with batch scripts and
Redis with one script call per key, as on a cluster), so all of them are held to the same rules.
The clock starts at the real time (Redis expires keys by its own clock) and is moved forward by
at most an entry's lifetime, to end leases and reach the last instant of an entry.

Redis comes from ``AKMA_TEST_REDIS_URL`` or the machine's 127.0.0.1:6379, under a key prefix
unique to the test and deleted afterwards. Without a reachable Redis its tests are skipped,
except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import RedisError

from broker_adapter.envelope_errors import StaleMessageError
from broker_adapter.replay import (
    Claim,
    ClaimOutcome,
    ClaimRequest,
    Decision,
    DecisionKind,
    Entry,
    EntryState,
    ReplayConflictError,
    ReplayGuard,
    ReplayStore,
)
from broker_adapter.replay_stores import MemoryReplayStore, SqliteReplayStore
from broker_adapter.replay_stores.redis import RedisReplayStore
from tests.conftest import _unavailable

WINDOW_MS = 60_000
SKEW_MS = 5_000
LEASE_MS = 10_000
LIFETIME_MS = WINDOW_MS + 2 * SKEW_MS

REDIS_URL = os.environ.get("AKMA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class FakeClock:
    def __init__(self, start_ms: int | None = None) -> None:
        self.now = time.time_ns() // 1_000_000 if start_ms is None else start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


def new_id() -> bytes:
    return os.urandom(16)


def digest() -> bytes:
    return os.urandom(32)


def make_guard(store: ReplayStore, clock: Callable[[], int]) -> ReplayGuard:
    return ReplayGuard(
        store, window_ms=WINDOW_MS, skew_ms=SKEW_MS, in_progress_lease_ms=LEASE_MS, clock=clock
    )


def claim_one(guard: ReplayGuard, msg_id: bytes, dig: bytes, stamp: int,
              sender: str = "af1") -> Claim:
    """One message through ``guard.claim``; its exception, if any, is raised."""
    [result] = guard.claim([ClaimRequest(sender, msg_id, dig, stamp)])
    if isinstance(result, Exception):
        raise result
    return result


def complete_one(guard: ReplayGuard, claim: Claim, response: bytes | None = None) -> bool:
    [done] = guard.complete([(claim, response)])
    assert not isinstance(done, Exception)
    return done


def release_one(guard: ReplayGuard, claim: Claim) -> bool:
    [released] = guard.release([claim])
    assert not isinstance(released, Exception)
    return released


def finished_message(guard: ReplayGuard, clock: FakeClock, response: bytes) -> tuple[bytes, bytes]:
    """(message id, digest) of a message claimed and completed with ``response``."""
    msg_id, dig = new_id(), digest()
    assert complete_one(guard, claim_one(guard, msg_id, dig, clock.now), response)
    return msg_id, dig


class StoreContract:
    """Subclasses provide ``store`` (a fresh, empty store) and ``other_store`` (a second handle
    on the same state, as another process or replica has: its own connection or client)."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def guard(self, store: ReplayStore, clock: FakeClock) -> ReplayGuard:
        return make_guard(store, clock)

    def test_new_then_in_progress_duplicate(self, guard: ReplayGuard, clock: FakeClock) -> None:
        msg_id, dig = new_id(), digest()
        first = claim_one(guard, msg_id, dig, clock.now)
        assert first.outcome is ClaimOutcome.PROCESS and not first.reclaimed
        assert first.token is not None
        clock.advance(4_000)
        second = claim_one(guard, msg_id, dig, clock.now - 4_000)
        assert second.outcome is ClaimOutcome.DUPLICATE_IN_PROGRESS
        assert second.retry_after_ms == LEASE_MS - 4_000
        assert second.token is None

    def test_done_duplicate_carries_cached_response(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        for response in (b"sealed-response", b"", None):
            msg_id, dig = new_id(), digest()
            assert complete_one(guard, claim_one(guard, msg_id, dig, clock.now), response)
            again = claim_one(guard, msg_id, dig, clock.now)
            assert again.outcome is ClaimOutcome.DUPLICATE_DONE
            assert again.cached_response == response

    def test_a_batch_answers_as_claims_one_by_one_would(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        # One store round for the batch; inside it, order and per-item answers must be exactly
        # as if sequential: new, in progress, done with its cached answer, conflict, too old.
        done_id, done_dig = finished_message(guard, clock, b"cached")
        twice_id, twice_dig = new_id(), digest()
        fresh = [ClaimRequest("af1", new_id(), digest(), clock.now) for _ in range(20)]
        requests = [
            *fresh,
            ClaimRequest("af1", twice_id, twice_dig, clock.now),
            ClaimRequest("af1", twice_id, twice_dig, clock.now),
            ClaimRequest("af1", done_id, done_dig, clock.now),
            ClaimRequest("af1", done_id, digest(), clock.now),
            ClaimRequest("af1", new_id(), digest(), clock.now - LIFETIME_MS - 1),
        ]
        results = guard.claim(requests)
        assert len(results) == len(requests)
        claims = [r for r in results[:20] if isinstance(r, Claim)]
        assert [c.outcome for c in claims] == [ClaimOutcome.PROCESS] * 20
        assert [c.msg_id for c in claims] == [r.msg_id for r in fresh]
        first, second, dup, conflict, stale = results[20:]
        assert isinstance(first, Claim) and first.outcome is ClaimOutcome.PROCESS
        assert isinstance(second, Claim)
        assert second.outcome is ClaimOutcome.DUPLICATE_IN_PROGRESS
        assert isinstance(dup, Claim) and dup.cached_response == b"cached"
        assert isinstance(conflict, ReplayConflictError)
        assert isinstance(stale, StaleMessageError)
        answers = [b"r%d" % i if i % 2 else None for i in range(20)]
        assert guard.complete(list(zip(claims, answers, strict=True))) == [True] * 20
        # Completed once: a second completion of the same claims loses, item by item.
        assert guard.complete([(claims[0], None), (first, None)]) == [False, True]
        again = guard.claim([ClaimRequest("af1", c.msg_id, r.digest, clock.now)
                             for c, r in zip(claims, fresh, strict=True)])
        assert [a.cached_response for a in again if isinstance(a, Claim)] == answers

    def test_same_id_other_bytes_is_a_conflict(self, guard: ReplayGuard, clock: FakeClock) -> None:
        msg_id, dig = new_id(), digest()
        claim = claim_one(guard, msg_id, dig, clock.now)
        with pytest.raises(ReplayConflictError) as info:
            claim_one(guard, msg_id, digest(), clock.now)
        assert info.value.code == "replay_conflict"
        assert complete_one(guard, claim)
        with pytest.raises(ReplayConflictError):
            claim_one(guard, msg_id, digest(), clock.now)
        # The conflict did not disturb the original entry.
        assert claim_one(guard, msg_id, dig, clock.now).outcome is ClaimOutcome.DUPLICATE_DONE

    def test_release_lets_a_redelivery_process(self, guard: ReplayGuard, clock: FakeClock) -> None:
        digests = [digest() for _ in range(3)]
        claims = [claim_one(guard, new_id(), d, clock.now) for d in digests]
        assert guard.release(claims[:2]) == [True, True]
        # Nothing left to release for those two; the third is still owned.
        assert guard.release(claims) == [False, False, True]
        again = claim_one(guard, claims[0].msg_id, digests[0], clock.now)
        assert again.outcome is ClaimOutcome.PROCESS and not again.reclaimed

    def test_expired_lease_is_reclaimed_and_old_owner_loses(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        msg_id, dig = new_id(), digest()
        stamp = clock.now
        dead = claim_one(guard, msg_id, dig, stamp)
        clock.advance(LEASE_MS)
        fresh = claim_one(guard, msg_id, dig, stamp)
        assert fresh.outcome is ClaimOutcome.PROCESS and fresh.reclaimed
        assert fresh.token != dead.token
        assert not complete_one(guard, dead, b"late")
        assert not release_one(guard, dead)
        assert complete_one(guard, fresh, b"winner")
        assert claim_one(guard, msg_id, dig, stamp).cached_response == b"winner"

    def test_owner_may_complete_after_its_lease_if_nobody_reclaimed(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        msg_id, dig = new_id(), digest()
        stamp = clock.now
        claim = claim_one(guard, msg_id, dig, stamp)
        clock.advance(LEASE_MS * 2)
        assert complete_one(guard, claim)
        assert claim_one(guard, msg_id, dig, stamp).outcome is ClaimOutcome.DUPLICATE_DONE

    def test_complete_and_release_only_once(self, guard: ReplayGuard, clock: FakeClock) -> None:
        claim = claim_one(guard, new_id(), digest(), clock.now)
        assert complete_one(guard, claim)
        assert not complete_one(guard, claim)
        assert not release_one(guard, claim)

    def test_senders_are_separate_namespaces(self, guard: ReplayGuard, clock: FakeClock) -> None:
        msg_id = new_id()
        a = claim_one(guard, msg_id, digest(), clock.now, sender="af1.example.com")
        b = claim_one(guard, msg_id, digest(), clock.now, sender="af2.example.com")
        assert a.outcome is b.outcome is ClaimOutcome.PROCESS

    # ---- the last instant of an entry --------------------------------------------------------

    def test_entry_still_counts_at_its_last_instant(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        stamp = clock.now
        done_id, done_dig = finished_message(guard, clock, b"first")
        busy = claim_one(guard, new_id(), digest(), stamp)
        clock.now = stamp + LIFETIME_MS  # == expires_at of both entries
        again = claim_one(guard, done_id, done_dig, stamp)
        assert again.outcome is ClaimOutcome.DUPLICATE_DONE and again.cached_response == b"first"
        with pytest.raises(ReplayConflictError):
            claim_one(guard, done_id, digest(), stamp)
        # Its owner still owns it at that instant.
        assert complete_one(guard, busy)

    def test_expired_entry_is_forgotten_one_ms_after_its_last_instant(
        self, store: ReplayStore, clock: FakeClock
    ) -> None:
        stamp = clock.now
        expires_at = stamp + LIFETIME_MS
        # A lease longer than the entry's life, so only expiry can free the key.
        key, entry = b"k" * 24, _entry(expires_at, expires_at + LEASE_MS)
        assert _decide(store, key, entry, clock.now).kind is DecisionKind.PROCESS_NEW
        clock.now = expires_at
        assert _decide(store, key, entry, clock.now).kind is DecisionKind.DUPLICATE_IN_PROGRESS
        assert store.complete_many([(key, entry.token, None)], clock.now) == [True]
        assert _decide(store, key, entry, clock.now).kind is DecisionKind.DUPLICATE_DONE
        clock.advance(1)
        assert store.complete_many([(key, entry.token, None)], clock.now) == [False]
        assert _decide(store, key, entry, clock.now).kind is DecisionKind.PROCESS_NEW

    def test_two_replicas_a_skew_apart_never_process_a_replay_twice(
        self, store: ReplayStore, other_store: ReplayStore, clock: FakeClock
    ) -> None:
        # Replica A's clock is t, replica B's t + skew. The envelope check at A accepts the
        # message until A's clock reaches ts + window + skew, the very instant B's clock reaches
        # the entry's expiry; B's traffic (and its purges) at that instant must not forget it.
        clock_b = FakeClock(clock.now + SKEW_MS)
        guard_a, guard_b = make_guard(store, clock), make_guard(other_store, clock_b)
        stamp = clock.now
        msg_id, dig = new_id(), digest()
        assert complete_one(guard_a, claim_one(guard_a, msg_id, dig, stamp), b"once")
        clock.advance(WINDOW_MS + SKEW_MS)
        clock_b.advance(WINDOW_MS + SKEW_MS)
        assert clock_b.now == stamp + LIFETIME_MS
        for _ in range(3):  # B's own traffic at its clock: claims that may purge
            claim_one(guard_b, new_id(), digest(), clock_b.now)
        replay = claim_one(guard_a, msg_id, dig, stamp)
        assert replay.outcome is ClaimOutcome.DUPLICATE_DONE and replay.cached_response == b"once"
        assert claim_one(guard_b, msg_id, dig, stamp).outcome is ClaimOutcome.DUPLICATE_DONE
        clock_b.advance(1)
        with pytest.raises(StaleMessageError):
            claim_one(guard_b, msg_id, dig, stamp)

    # ---- several guards ------------------------------------------------------------------------

    def test_many_guards_one_store_one_process(self, store: ReplayStore, clock: FakeClock) -> None:
        guards = [make_guard(store, clock) for _ in range(8)]
        msg_id, dig = new_id(), digest()
        outcomes = [claim_one(g, msg_id, dig, clock.now).outcome for g in guards]
        assert outcomes.count(ClaimOutcome.PROCESS) == 1
        assert outcomes.count(ClaimOutcome.DUPLICATE_IN_PROGRESS) == 7

    def test_two_guards_in_two_threads_process_each_id_once(
        self, store: ReplayStore, other_store: ReplayStore, clock: FakeClock
    ) -> None:
        requests = [ClaimRequest("af1", new_id(), digest(), clock.now) for _ in range(200)]
        results: list[list[Claim | Exception]] = [[], []]

        def claimer(store_: ReplayStore, out: list[Claim | Exception]) -> None:
            guard = make_guard(store_, clock)
            for start in range(0, len(requests), 10):
                batch = guard.claim(requests[start:start + 10])
                out += batch
                owned = [c for c in batch if isinstance(c, Claim) and c.token is not None]
                assert guard.complete([(c, b"answer") for c in owned]) == [True] * len(owned)

        threads = [threading.Thread(target=claimer, args=(s, r))
                   for s, r in zip((store, other_store), results, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(len(r) == len(requests) for r in results)
        for a, b in zip(*results, strict=True):
            assert isinstance(a, Claim) and isinstance(b, Claim)
            assert sorted([a.outcome.value, b.outcome.value]).count("process") == 1


def _entry(expires_at_ms: int, lease_until_ms: int) -> Entry:
    return Entry(b"d" * 16, EntryState.IN_PROGRESS, b"T" * 8, lease_until_ms, expires_at_ms)


def _decide(store: ReplayStore, key: bytes, entry: Entry, now_ms: int) -> Decision:
    [decision] = store.claim_many([(key, entry)], now_ms)
    assert isinstance(decision, Decision)
    return decision


class TestMemoryContract(StoreContract):
    # One store object for both guards: it is called from the loop and the envelope thread.

    @pytest.fixture
    def store(self) -> Iterator[ReplayStore]:
        store = MemoryReplayStore()
        yield store
        store.close()

    @pytest.fixture
    def other_store(self, store: ReplayStore) -> ReplayStore:
        return store


class TestSqliteContract(StoreContract):
    # A purge in every claim transaction, so purges meet every boundary the contract tests.

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ReplayStore]:
        store = SqliteReplayStore(tmp_path / "replay.db", purge_every=1)
        yield store
        store.close()

    @pytest.fixture
    def other_store(self, store: ReplayStore, tmp_path: Path) -> Iterator[ReplayStore]:
        other = SqliteReplayStore(tmp_path / "replay.db", purge_every=1)
        yield other
        other.close()


# ---- Redis ----------------------------------------------------------------------------------


def connect_redis() -> Redis:
    """A blocking client for the test Redis; skips (fails under CI) if it is not reachable."""
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        client.close()
        _unavailable(f"Redis not reachable at {REDIS_URL} ({exc}); set AKMA_TEST_REDIS_URL")
    return client


@pytest.fixture
def redis_prefix() -> str:
    return f"akma-test:replay:{uuid.uuid4().hex}:"


@pytest.fixture
def redis_client(redis_prefix: str) -> Iterator[Redis]:
    client = connect_redis()
    yield client
    keys = list(client.scan_iter(match=f"{redis_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def other_redis_client(redis_client: Redis) -> Iterator[Redis]:
    client = connect_redis()
    yield client
    client.close()


@pytest.mark.redis
class TestRedisContract(StoreContract):
    batch_scripts = True

    @pytest.fixture
    def store(self, redis_client: Redis, redis_prefix: str) -> ReplayStore:
        return RedisReplayStore(redis_client, prefix=redis_prefix,
                                batch_scripts=self.batch_scripts)

    @pytest.fixture
    def other_store(self, other_redis_client: Redis, redis_prefix: str) -> ReplayStore:
        return RedisReplayStore(other_redis_client, prefix=redis_prefix,
                                batch_scripts=self.batch_scripts)

    def test_expired_entry_is_forgotten_one_ms_after_its_last_instant(
        self, store: RedisReplayStore, redis_client: Redis, clock: FakeClock
    ) -> None:
        # Redis expires keys by its own clock, so this is about the key's time to live: it
        # must cover expires_at itself, and no more than the millisecond after it.
        key, entry = b"k" * 24, _entry(clock.now + 5_000, clock.now + 10_000)
        assert _decide(store, key, entry, clock.now).kind is DecisionKind.PROCESS_NEW
        assert 4_900 < redis_client.pttl(store.redis_key(key)) <= 5_001


@pytest.mark.redis
class TestRedisPerKeyContract(TestRedisContract):
    """One script call per key, as on a Redis Cluster (a script may only touch keys of one hash
    slot there): the same rules as with a batch in one script call."""

    batch_scripts = False
