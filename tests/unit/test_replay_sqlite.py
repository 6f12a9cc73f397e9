"""SQLite store: restarts, expiry, several guards on one file, lock waits off the event loop,
claims from a worker thread."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from broker_adapter.replay import (
    Claim,
    ClaimOutcome,
    ClaimRequest,
    ReplayGuard,
    ReplayStoreError,
)
from broker_adapter.replay_stores import MemoryReplayStore, SqliteReplayStore
from tests.unit.test_replay_contract import FakeClock

WINDOW, SKEW, LEASE = 10_000, 1_000, 5_000
T0 = 1_700_000_000_000


def guard_on(store: SqliteReplayStore, clock: FakeClock) -> ReplayGuard:
    return ReplayGuard(
        store, window_ms=WINDOW, skew_ms=SKEW, in_progress_lease_ms=LEASE, clock=clock
    )


async def test_state_survives_close_and_reopen(tmp_path: Path) -> None:
    path, clock = tmp_path / "replay.db", FakeClock(T0)
    done_id, busy_id, dig_done, dig_busy = os.urandom(16), os.urandom(16), b"a" * 32, b"b" * 32
    store = SqliteReplayStore(path)
    guard = guard_on(store, clock)
    await guard.complete(await guard.claim("af1", done_id, dig_done, T0), b"sealed reply")
    await guard.claim("af1", busy_id, dig_busy, T0)  # the process "dies" mid-handler
    await store.close()

    store = SqliteReplayStore(path)
    guard = guard_on(store, clock)
    again = await guard.claim("af1", done_id, dig_done, T0)
    assert again.outcome is ClaimOutcome.DUPLICATE_DONE
    assert again.cached_response == b"sealed reply"
    assert (await guard.claim("af1", busy_id, dig_busy, T0)).outcome is (
        ClaimOutcome.DUPLICATE_IN_PROGRESS
    )
    clock.advance(LEASE)
    assert (await guard.claim("af1", busy_id, dig_busy, T0)).reclaimed
    await store.close()


async def test_expired_rows_are_purged_and_size_stays_bounded(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = SqliteReplayStore(tmp_path / "replay.db", purge_every=16, purge_batch=64)
    guard = guard_on(store, clock)
    lifetime = WINDOW + 2 * SKEW
    peak = 0
    for _ in range(2_000):
        clock.advance(10)  # 100 messages per second: about 1,200 live ids
        claim = await guard.claim("af1", os.urandom(16), os.urandom(32), clock.now)
        await guard.complete(claim)
        peak = max(peak, (await store.stats()).rows) if clock.now % 500 == 0 else peak
    rows = (await store.stats()).rows
    assert lifetime // 10 <= rows <= lifetime // 10 + 16  # live set plus one purge interval
    assert peak <= lifetime // 10 + 16
    clock.advance(lifetime)
    assert await store.purge(clock.now) == rows
    assert (await store.stats()).rows == 0
    await store.close()


async def test_bytes_per_live_id_within_budget(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = SqliteReplayStore(tmp_path / "replay.db")
    guard = guard_on(store, clock)
    for i in range(2_000):
        claim = await guard.claim(f"af{i % 7}.example.com", os.urandom(16), os.urandom(32), T0)
        if i % 2:
            await guard.complete(claim)
    stats = await store.stats()
    assert stats.rows == 2_000
    # Issue target: at most 256 bytes of replay state per live message id (no cached response).
    assert stats.bytes_used / stats.rows <= 256
    await store.close()


def _claim_all_in_thread(
    path: Path, ids: list[bytes], digests: list[bytes], results: list[ClaimOutcome]
) -> None:
    async def run() -> None:
        store = SqliteReplayStore(path)
        guard = guard_on(store, FakeClock(T0))
        for msg_id, dig in zip(ids, digests, strict=True):
            results.append((await guard.claim("af1", msg_id, dig, T0)).outcome)
        await store.close()

    asyncio.run(run())


def test_two_guards_in_two_threads_on_one_file_process_each_id_once(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    asyncio.run(SqliteReplayStore(path).close())  # create the schema before the race
    ids = [os.urandom(16) for _ in range(300)]
    digests = [os.urandom(32) for _ in ids]
    results: list[list[ClaimOutcome]] = [[], [], []]
    threads = [
        threading.Thread(target=_claim_all_in_thread, args=(path, ids, digests, r)) for r in results
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_id = list(zip(*results, strict=True))
    assert len(per_id) == len(ids)
    for outcomes in per_id:
        assert sorted(o.value for o in outcomes) == [
            "duplicate_in_progress",
            "duplicate_in_progress",
            "process",
        ]


async def test_waits_for_another_writer_without_blocking_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    store = SqliteReplayStore(path)
    guard = guard_on(store, FakeClock(T0))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticking = asyncio.create_task(ticker())
    loop = asyncio.get_running_loop()
    loop.call_later(0.15, lambda: other.execute("COMMIT"))
    claim = await guard.claim("af1", os.urandom(16), os.urandom(32), T0)
    ticking.cancel()
    other.close()
    assert claim.outcome is ClaimOutcome.PROCESS
    assert ticks >= 10  # the loop kept running while the claim waited for the lock
    await store.close()


async def test_lock_held_too_long_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    store = SqliteReplayStore(path, busy_timeout_ms=50)
    guard = guard_on(store, FakeClock(T0))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ReplayStoreError) as info:
            await guard.claim("af1", os.urandom(16), os.urandom(32), T0)
        assert info.value.code == "replay_store_unavailable"
    finally:
        other.execute("ROLLBACK")
        other.close()
    # Once the lock is gone the same store works again.
    assert (await guard.claim("af1", os.urandom(16), os.urandom(32), T0)).outcome is (
        ClaimOutcome.PROCESS
    )
    await store.close()


def test_unknown_schema_version_and_unusable_path_are_store_errors(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(ReplayStoreError):
        SqliteReplayStore(path)
    with pytest.raises(ReplayStoreError):
        SqliteReplayStore(tmp_path / "missing-dir" / "replay.db")


def test_purge_settings_must_keep_up() -> None:
    with pytest.raises(ValueError):
        SqliteReplayStore(":memory:", purge_every=100, purge_batch=50)


# ---- claims from a worker thread (a consumer's envelope thread) ------------------------------


async def test_thread_claims_beside_loop_commits_process_each_id_once(tmp_path: Path) -> None:
    # Three threads claim the same ids batch by batch while the loop completes every claim it
    # gets back at once: the connection lock keeps the thread's transactions and the loop's
    # group commits apart, and every id is processed exactly once.
    store = SqliteReplayStore(tmp_path / "replay.db", purge_every=16, purge_batch=64)
    guard = guard_on(store, FakeClock(T0))
    ids = [os.urandom(16) for _ in range(240)]
    digests = [os.urandom(32) for _ in ids]
    requests = [ClaimRequest("af1", i, d, T0) for i, d in zip(ids, digests, strict=True)]
    completed: list[bool | Exception] = []

    async def claimer() -> list[Claim | Exception]:
        out: list[Claim | Exception] = []
        for start in range(0, len(requests), 20):
            batch = await asyncio.to_thread(guard.claim_many_sync, requests[start:start + 20])
            out += batch
            owned = [c for c in batch if isinstance(c, Claim) and c.token is not None]
            completed.extend(await guard.complete_many([(c, b"answer") for c in owned]))
        return out

    results = await asyncio.gather(claimer(), claimer(), claimer())
    assert not [r for rs in results for r in rs if isinstance(r, Exception)]
    for per_id in zip(*results, strict=True):
        outcomes = sorted(c.outcome.value for c in per_id if isinstance(c, Claim))
        assert outcomes.count("process") == 1, outcomes
    assert completed == [True] * len(ids)
    assert (await store.stats()).rows == len(ids)
    await store.close()


async def test_thread_claims_purge_expired_rows(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = SqliteReplayStore(tmp_path / "replay.db", purge_every=16, purge_batch=64)
    guard = guard_on(store, clock)
    lifetime = WINDOW + 2 * SKEW
    for _ in range(300):
        clock.advance(100)  # 10 messages per second: about 120 live ids
        [claim] = await asyncio.to_thread(guard.claim_many_sync, [
            ClaimRequest("af1", os.urandom(16), os.urandom(32), clock.now)])
        assert isinstance(claim, Claim)
        await guard.complete(claim)
    assert (await store.stats()).rows <= lifetime // 100 + 16
    await store.close()


async def test_thread_claim_waits_for_another_writer_then_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    store = SqliteReplayStore(path, busy_timeout_ms=300)
    guard = guard_on(store, FakeClock(T0))
    request = [ClaimRequest("af1", os.urandom(16), os.urandom(32), T0)]
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    asyncio.get_running_loop().call_later(0.1, lambda: other.execute("COMMIT"))
    [claim] = await asyncio.to_thread(guard.claim_many_sync, request)
    assert isinstance(claim, Claim) and claim.outcome is ClaimOutcome.PROCESS
    other.execute("BEGIN IMMEDIATE")  # and now holds it past the busy timeout
    try:
        with pytest.raises(ReplayStoreError):
            await asyncio.to_thread(guard.claim_many_sync, request)
    finally:
        other.execute("ROLLBACK")
        other.close()
    await store.close()
    with pytest.raises(ReplayStoreError, match="closed"):
        guard.claim_many_sync(request)


def test_only_a_store_that_can_claims_from_a_thread() -> None:
    guard = ReplayGuard(MemoryReplayStore(), window_ms=WINDOW, skew_ms=SKEW,
                        in_progress_lease_ms=LEASE, clock=FakeClock(T0))
    assert not guard.claims_in_thread
    with pytest.raises(TypeError):
        guard.claim_many_sync([])
