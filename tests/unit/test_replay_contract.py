"""Behaviour every replay store must share, run through ``ReplayGuard``.

``StoreContract`` is subclassed once per store: here for the memory and SQLite stores, and in
``tests/integration/test_replay_redis.py`` for Redis, so all three are held to the same rules.
The clock starts at the real time (Redis expires keys by its own clock) and is only moved
forward by less than an entry's lifetime, to end leases.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from broker_adapter.envelope_errors import StaleMessageError
from broker_adapter.replay import (
    Claim,
    ClaimOutcome,
    ClaimRequest,
    ReplayConflictError,
    ReplayGuard,
    ReplayStore,
)
from broker_adapter.replay_stores import MemoryReplayStore, SqliteReplayStore

WINDOW_MS = 60_000
SKEW_MS = 5_000
LEASE_MS = 10_000


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


class StoreContract:
    """Subclasses provide the ``store`` fixture: a fresh, empty store."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def guard(self, store: ReplayStore, clock: FakeClock) -> ReplayGuard:
        return make_guard(store, clock)

    async def test_new_then_in_progress_duplicate(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        msg_id, dig = new_id(), digest()
        first = await guard.claim("af1", msg_id, dig, clock.now)
        assert first.outcome is ClaimOutcome.PROCESS and not first.reclaimed
        assert first.token is not None
        clock.advance(4_000)
        second = await guard.claim("af1", msg_id, dig, clock.now - 4_000)
        assert second.outcome is ClaimOutcome.DUPLICATE_IN_PROGRESS
        assert second.retry_after_ms == LEASE_MS - 4_000
        assert second.token is None

    async def test_done_duplicate_carries_cached_response(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        for response in (b"sealed-response", b"", None):
            msg_id, dig = new_id(), digest()
            claim = await guard.claim("af1", msg_id, dig, clock.now)
            assert await guard.complete(claim, response)
            again = await guard.claim("af1", msg_id, dig, clock.now)
            assert again.outcome is ClaimOutcome.DUPLICATE_DONE
            assert again.cached_response == response

    async def test_calls_made_together_each_get_their_own_answer(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        # The SQLite and Redis stores run the calls of one loop turn as one transaction or one
        # pipeline; inside it, order and per-call answers must be exactly as if sequential.
        done_id, done_dig = await finished_message(guard, clock, b"cached")
        twice_id, twice_dig = new_id(), digest()
        fresh = [(new_id(), digest()) for _ in range(20)]
        calls = [guard.claim("af1", i, d, clock.now) for i, d in fresh]
        calls += [
            guard.claim("af1", twice_id, twice_dig, clock.now),
            guard.claim("af1", twice_id, twice_dig, clock.now),
            guard.claim("af1", done_id, done_dig, clock.now),
            guard.claim("af1", done_id, digest(), clock.now),
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(
            not isinstance(r, BaseException) and r.outcome is ClaimOutcome.PROCESS
            for r in results[:20]
        )
        first, second, dup, conflict = results[20:]
        assert not isinstance(first, BaseException) and first.outcome is ClaimOutcome.PROCESS
        assert not isinstance(second, BaseException)
        assert second.outcome is ClaimOutcome.DUPLICATE_IN_PROGRESS
        assert not isinstance(dup, BaseException) and dup.cached_response == b"cached"
        assert isinstance(conflict, ReplayConflictError)
        completions = await asyncio.gather(
            *(guard.complete(r, None) for r in results[:20] if not isinstance(r, BaseException))
        )
        assert completions == [True] * 20

    async def test_claim_many_answers_as_claims_one_by_one_would(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        # The batch path (one store round for a consumer's batch) must decide exactly as the
        # single calls: new, in progress, done with its cached answer, conflict, too old.
        done_id, done_dig = await finished_message(guard, clock, b"cached")
        twice_id, twice_dig = new_id(), digest()
        fresh = [ClaimRequest("af1", new_id(), digest(), clock.now) for _ in range(20)]
        requests = [
            *fresh,
            ClaimRequest("af1", twice_id, twice_dig, clock.now),
            ClaimRequest("af1", twice_id, twice_dig, clock.now),
            ClaimRequest("af1", done_id, done_dig, clock.now),
            ClaimRequest("af1", done_id, digest(), clock.now),
            ClaimRequest("af1", new_id(), digest(), clock.now - WINDOW_MS - 3 * SKEW_MS),
        ]
        results = await guard.claim_many(requests)
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
        assert await guard.complete_many(list(zip(claims, answers, strict=True))) == [True] * 20
        # Completed once: a second completion of the same claims loses, item by item.
        assert await guard.complete_many([(claims[0], None), (first, None)]) == [False, True]
        again = await guard.claim_many([ClaimRequest("af1", c.msg_id, r.digest, clock.now)
                                        for c, r in zip(claims, fresh, strict=True)])
        assert [a.cached_response for a in again if isinstance(a, Claim)] == answers
        assert await guard.claim_many([]) == []
        assert await guard.complete_many([]) == []

    async def test_same_id_other_bytes_is_a_conflict(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        msg_id, dig = new_id(), digest()
        claim = await guard.claim("af1", msg_id, dig, clock.now)
        with pytest.raises(ReplayConflictError) as info:
            await guard.claim("af1", msg_id, digest(), clock.now)
        assert info.value.code == "replay_conflict"
        await guard.complete(claim)
        with pytest.raises(ReplayConflictError):
            await guard.claim("af1", msg_id, digest(), clock.now)
        # The conflict did not disturb the original entry.
        assert (await guard.claim("af1", msg_id, dig, clock.now)).outcome is (
            ClaimOutcome.DUPLICATE_DONE
        )

    async def test_release_lets_a_redelivery_process(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        msg_id, dig = new_id(), digest()
        claim = await guard.claim("af1", msg_id, dig, clock.now)
        assert await guard.release(claim)
        assert not await guard.release(claim)  # nothing left to release
        again = await guard.claim("af1", msg_id, dig, clock.now)
        assert again.outcome is ClaimOutcome.PROCESS and not again.reclaimed

    async def test_expired_lease_is_reclaimed_and_old_owner_loses(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        msg_id, dig = new_id(), digest()
        stamp = clock.now
        dead = await guard.claim("af1", msg_id, dig, stamp)
        clock.advance(LEASE_MS)
        fresh = await guard.claim("af1", msg_id, dig, stamp)
        assert fresh.outcome is ClaimOutcome.PROCESS and fresh.reclaimed
        assert fresh.token != dead.token
        assert not await guard.complete(dead, b"late")
        assert not await guard.release(dead)
        assert await guard.complete(fresh, b"winner")
        final = await guard.claim("af1", msg_id, dig, stamp)
        assert final.cached_response == b"winner"

    async def test_owner_may_complete_after_its_lease_if_nobody_reclaimed(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        msg_id, dig = new_id(), digest()
        stamp = clock.now
        claim = await guard.claim("af1", msg_id, dig, stamp)
        clock.advance(LEASE_MS * 2)
        assert await guard.complete(claim)
        assert (await guard.claim("af1", msg_id, dig, stamp)).outcome is (
            ClaimOutcome.DUPLICATE_DONE
        )

    async def test_complete_and_release_only_once(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        claim = await guard.claim("af1", new_id(), digest(), clock.now)
        assert await guard.complete(claim)
        assert not await guard.complete(claim)
        assert not await guard.release(claim)

    async def test_senders_are_separate_namespaces(
        self, guard: ReplayGuard, clock: FakeClock
    ) -> None:
        msg_id = new_id()
        a = await guard.claim("af1.example.com", msg_id, digest(), clock.now)
        b = await guard.claim("af2.example.com", msg_id, digest(), clock.now)
        assert a.outcome is b.outcome is ClaimOutcome.PROCESS

    async def test_concurrent_claims_yield_one_process(
        self, store: ReplayStore, clock: FakeClock
    ) -> None:
        guards = [make_guard(store, clock) for _ in range(8)]
        msg_id, dig = new_id(), digest()
        claims = await asyncio.gather(*(g.claim("af1", msg_id, dig, clock.now) for g in guards))
        outcomes = sorted(c.outcome.value for c in claims)
        assert outcomes.count(ClaimOutcome.PROCESS.value) == 1
        assert outcomes.count(ClaimOutcome.DUPLICATE_IN_PROGRESS.value) == 7


async def finished_message(
    guard: ReplayGuard, clock: FakeClock, response: bytes
) -> tuple[bytes, bytes]:
    """(message id, digest) of a message claimed and completed with ``response``."""
    msg_id, dig = new_id(), digest()
    claim = await guard.claim("af1", msg_id, dig, clock.now)
    assert await guard.complete(claim, response)
    return msg_id, dig


def make_guard(store: ReplayStore, clock: Callable[[], int]) -> ReplayGuard:
    return ReplayGuard(
        store, window_ms=WINDOW_MS, skew_ms=SKEW_MS, in_progress_lease_ms=LEASE_MS, clock=clock
    )


class TestMemoryContract(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[ReplayStore]:
        store = MemoryReplayStore()
        yield store
        await store.close()


class TestSqliteContract(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[ReplayStore]:
        store = SqliteReplayStore(tmp_path / "replay.db")
        yield store
        await store.close()


class ThreadClaimingGuard(ReplayGuard):
    """Batch claims go through ``claim_many_sync`` in a worker thread, as a consumer's envelope
    thread makes them; everything else stays on the loop, as in that consumer."""

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim | Exception]:
        return await asyncio.to_thread(self.claim_many_sync, requests)


class ThreadClaimContract(StoreContract):
    """The contract with batch claims made from a thread, beside the loop's own calls;
    subclasses provide a ``store`` that can claim from a thread."""

    @pytest.fixture
    def guard(self, store: ReplayStore, clock: FakeClock) -> ReplayGuard:
        guard = ThreadClaimingGuard(store, window_ms=WINDOW_MS, skew_ms=SKEW_MS,
                                    in_progress_lease_ms=LEASE_MS, clock=clock)
        assert guard.claims_in_thread
        return guard


class TestSqliteThreadClaimContract(ThreadClaimContract):
    """The same rules when batches are claimed from a thread, beside the loop's group commits."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[ReplayStore]:
        store = SqliteReplayStore(tmp_path / "replay.db")
        yield store
        await store.close()


class TestSqliteFullSyncContract(StoreContract):
    """FULL runs every call in a worker thread; the rules must not change."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[ReplayStore]:
        store = SqliteReplayStore(tmp_path / "replay.db", synchronous="FULL")
        yield store
        await store.close()
