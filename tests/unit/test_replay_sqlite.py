"""SQLite store: restarts, expiry and purges, several connections on one file, lock waits."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from broker_adapter.replay import (
    ClaimOutcome,
    ClaimRequest,
    Entry,
    EntryState,
    ReplayGuard,
    ReplayStoreError,
)
from broker_adapter.replay_stores import SqliteReplayStore
from tests.unit.test_replay_contract import FakeClock, claim_one, complete_one

WINDOW, SKEW, LEASE = 10_000, 1_000, 5_000
LIFETIME = WINDOW + 2 * SKEW
T0 = 1_700_000_000_000


def guard_on(store: SqliteReplayStore, clock: FakeClock) -> ReplayGuard:
    return ReplayGuard(
        store, window_ms=WINDOW, skew_ms=SKEW, in_progress_lease_ms=LEASE, clock=clock
    )


def test_state_survives_close_and_reopen(tmp_path: Path) -> None:
    path, clock = tmp_path / "replay.db", FakeClock(T0)
    done_id, busy_id, dig_done, dig_busy = os.urandom(16), os.urandom(16), b"a" * 32, b"b" * 32
    store = SqliteReplayStore(path)
    guard = guard_on(store, clock)
    assert complete_one(guard, claim_one(guard, done_id, dig_done, T0), b"sealed reply")
    claim_one(guard, busy_id, dig_busy, T0)  # the process "dies" mid-handler
    store.close()
    store.close()  # closing twice is harmless

    store = SqliteReplayStore(path)
    guard = guard_on(store, clock)
    again = claim_one(guard, done_id, dig_done, T0)
    assert again.outcome is ClaimOutcome.DUPLICATE_DONE
    assert again.cached_response == b"sealed reply"
    assert claim_one(guard, busy_id, dig_busy, T0).outcome is ClaimOutcome.DUPLICATE_IN_PROGRESS
    clock.advance(LEASE)
    assert claim_one(guard, busy_id, dig_busy, T0).reclaimed
    store.close()


def test_a_closed_store_is_a_store_error(tmp_path: Path) -> None:
    store = SqliteReplayStore(tmp_path / "replay.db")
    guard = guard_on(store, FakeClock(T0))
    store.close()
    with pytest.raises(ReplayStoreError, match="closed"):
        guard.claim([ClaimRequest("af1", os.urandom(16), os.urandom(32), T0)])
    with pytest.raises(ReplayStoreError, match="closed"):
        store.stats()


def test_expired_rows_are_purged_and_size_stays_bounded(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = SqliteReplayStore(tmp_path / "replay.db", purge_every=16, purge_batch=64)
    guard = guard_on(store, clock)
    peak = 0
    for _ in range(2_000):
        clock.advance(10)  # 100 messages per second: about 1,200 live ids
        assert complete_one(guard, claim_one(guard, os.urandom(16), os.urandom(32), clock.now))
        peak = max(peak, store.stats().rows) if clock.now % 500 == 0 else peak
    rows = store.stats().rows
    assert LIFETIME // 10 <= rows <= LIFETIME // 10 + 16  # live set plus one purge interval
    assert peak <= LIFETIME // 10 + 17
    clock.advance(LIFETIME + 1)
    assert store.purge(clock.now) == rows
    assert store.stats().rows == 0
    store.close()


def test_batches_larger_than_the_purge_batch_are_purged_too(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = SqliteReplayStore(tmp_path / "replay.db", purge_every=16, purge_batch=64)
    guard = guard_on(store, clock)
    for _ in range(20):
        clock.advance(LIFETIME // 4)
        claims = guard.claim([ClaimRequest("af1", os.urandom(16), os.urandom(32), clock.now)
                              for _ in range(200)])
        assert len(claims) == 200
    # Each purge deletes at least as many rows as were claimed since the last one.
    assert store.stats().rows <= 5 * 200
    store.close()


def test_purge_keeps_a_row_through_its_expiry_instant(tmp_path: Path) -> None:
    store = SqliteReplayStore(tmp_path / "replay.db")
    entry = Entry(b"d" * 16, EntryState.DONE, b"", 0, expires_at_ms=T0)
    [decision] = store.claim_many([(b"k" * 24, entry)], now_ms=T0 - 1)
    assert not isinstance(decision, Exception) and decision.kind.claims
    assert store.purge(T0) == 0 and store.stats().rows == 1
    assert store.purge(T0 + 1, limit=10) == 1 and store.stats().rows == 0
    store.close()


def test_bytes_per_live_id_within_budget(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = SqliteReplayStore(tmp_path / "replay.db")
    guard = guard_on(store, clock)
    for i in range(2_000):
        sender = f"af{i % 7}.example.com"
        claim = claim_one(guard, os.urandom(16), os.urandom(32), T0, sender=sender)
        if i % 2:
            complete_one(guard, claim)
    stats = store.stats()
    assert stats.rows == 2_000
    # At most 256 bytes of replay state per live message id (no cached response).
    assert stats.bytes_used / stats.rows <= 256
    store.close()


def _claim_all(path: Path, ids: list[bytes], digests: list[bytes],
               results: list[ClaimOutcome]) -> None:
    # Its own store, so its own connection, as another process has.
    store = SqliteReplayStore(path)
    guard = guard_on(store, FakeClock(T0))
    for start in range(0, len(ids), 10):
        batch = guard.claim([ClaimRequest("af1", i, d, T0) for i, d in
                             zip(ids[start:start + 10], digests[start:start + 10], strict=True)])
        for claim in batch:
            assert not isinstance(claim, Exception)
            results.append(claim.outcome)
    store.close()


def test_three_connections_on_one_file_process_each_id_once(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    SqliteReplayStore(path).close()  # create the schema before the race
    ids = [os.urandom(16) for _ in range(300)]
    digests = [os.urandom(32) for _ in ids]
    results: list[list[ClaimOutcome]] = [[], [], []]
    threads = [threading.Thread(target=_claim_all, args=(path, ids, digests, r)) for r in results]
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


def test_waits_for_another_writer_up_to_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    store = SqliteReplayStore(path, busy_timeout_ms=2_000)
    guard = guard_on(store, FakeClock(T0))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    timer = threading.Timer(0.15, lambda: other.execute("COMMIT"))
    timer.start()
    started = time.monotonic()
    claim = claim_one(guard, os.urandom(16), os.urandom(32), T0)
    waited = time.monotonic() - started
    timer.join()
    other.close()
    assert claim.outcome is ClaimOutcome.PROCESS
    assert 0.1 <= waited < 2.0
    store.close()


def test_lock_held_too_long_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    store = SqliteReplayStore(path, busy_timeout_ms=50)
    guard = guard_on(store, FakeClock(T0))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ReplayStoreError) as info:
            guard.claim([ClaimRequest("af1", os.urandom(16), os.urandom(32), T0)])
        assert info.value.code == "replay_store_unavailable"
        with pytest.raises(ReplayStoreError):
            store.purge(T0)
    finally:
        other.execute("ROLLBACK")
        other.close()
    # Once the lock is gone the same store works again: the failed transaction left nothing.
    assert claim_one(guard, os.urandom(16), os.urandom(32), T0).outcome is ClaimOutcome.PROCESS
    assert store.stats().rows == 1
    store.close()


def test_opening_a_file_locked_too_long_says_locked(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN EXCLUSIVE")  # a new file, not yet WAL, held by another process
    try:
        with pytest.raises(ReplayStoreError, match="locked"):
            SqliteReplayStore(path, busy_timeout_ms=50)
    finally:
        other.execute("ROLLBACK")
        other.close()
    SqliteReplayStore(path).close()


def test_full_synchronous_keeps_the_same_rules(tmp_path: Path) -> None:
    store = SqliteReplayStore(tmp_path / "replay.db", synchronous="FULL")
    guard = guard_on(store, FakeClock(T0))
    msg_id, dig = os.urandom(16), os.urandom(32)
    assert complete_one(guard, claim_one(guard, msg_id, dig, T0), b"r")
    assert claim_one(guard, msg_id, dig, T0).cached_response == b"r"
    store.close()


def test_unknown_schema_version_and_unusable_path_are_store_errors(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(ReplayStoreError):
        SqliteReplayStore(path)
    with pytest.raises(ReplayStoreError):
        SqliteReplayStore(tmp_path / "missing-dir" / "replay.db")


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        SqliteReplayStore(":memory:", purge_every=100, purge_batch=50)
    with pytest.raises(ValueError):
        SqliteReplayStore(":memory:", busy_timeout_ms=-1)


def test_a_checkpoint_from_another_thread_runs_beside_claims(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    store = SqliteReplayStore(path)
    clock = FakeClock(T0)
    guard = guard_on(store, clock)
    stop = threading.Event()
    checkpoints = 0

    def checkpoint_until_stopped() -> None:
        nonlocal checkpoints
        while not stop.is_set():
            store.checkpoint()
            checkpoints += 1

    checkpointer = threading.Thread(target=checkpoint_until_stopped)
    checkpointer.start()
    try:
        for _ in range(300):
            claim = claim_one(guard, os.urandom(16), os.urandom(32), T0)
            assert claim.outcome is ClaimOutcome.PROCESS
            assert complete_one(guard, claim) is True
    finally:
        stop.set()
        checkpointer.join()
    store.checkpoint()
    assert checkpoints > 0
    # Everything written is in the database file itself: the WAL has nothing left to copy.
    with sqlite3.connect(path) as check:
        busy, log_frames, copied = check.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and log_frames == copied
    store.close()
    store.checkpoint()  # after close: nothing to do, no error


def test_one_store_object_shared_by_two_threads_processes_each_id_once(tmp_path: Path) -> None:
    # The receive path calls one store from the event loop and from the envelope thread.
    store = SqliteReplayStore(tmp_path / "replay.db")
    clock = FakeClock(T0)
    ids = [os.urandom(16) for _ in range(300)]
    digests = [os.urandom(32) for _ in ids]
    results: list[list[ClaimOutcome]] = [[], []]

    def claim_all(out: list[ClaimOutcome]) -> None:
        guard = guard_on(store, clock)
        for msg_id, digest in zip(ids, digests, strict=True):
            out.append(claim_one(guard, msg_id, digest, T0).outcome)

    threads = [threading.Thread(target=claim_all, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for pair in zip(*results, strict=True):
        assert sorted(o.value for o in pair) == ["duplicate_in_progress", "process"]
    store.close()
