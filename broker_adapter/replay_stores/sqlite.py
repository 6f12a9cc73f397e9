"""SQLite replay store: the default, one file on disk that survives restarts.

Each claim is one ``BEGIN IMMEDIATE`` transaction (read the row, ``decide``, write), so several
processes may share the file and exactly one of them wins a key. WAL journaling lets readers
run beside the writer; ``synchronous=NORMAL`` survives a crashed process (the case that matters
for redelivery) but may lose the last commits on power loss, after which at most those messages
are processed again (handlers are idempotent); pass ``synchronous="FULL"`` to close that gap at
the cost of an fsync per claim.

Group commit: calls made in the same turn of the event loop (a consumer with prefetch N gets
many deliveries per socket read, and their handlers all reach ``claim`` before the loop turns
again) are queued and run as ONE transaction at the start of the next turn; each call still gets
its own result. ``BEGIN``/``COMMIT`` were two thirds of a lone claim's cost, so a batch of many
claims costs little more than its statements (docs/benchmarks.md). A failed transaction fails
every call in it with ``ReplayStoreError``; callers retry or requeue, as for a lone call.

Batches run on the event loop thread: an uncontended claim takes about 0.1 ms (see
docs/replay.md), less than the hand-off to a worker thread costs (about 0.28 ms here). Two
things could still stall the loop for milliseconds, and both are moved off it: when another
process holds the write lock, the batch moves to a worker thread and waits there with a busy
timeout; and WAL checkpoints (which fsync) are not left to SQLite's automatic checkpoint inside
some unlucky commit but run from a second connection in a worker thread, which in WAL mode does
not block our writes. With ``synchronous="FULL"`` every commit fsyncs (about 2 ms here), so then
every batch runs in a thread.

``claim_many_sync`` claims from a worker thread instead: a consumer that opens a batch of
envelopes on its envelope thread claims them there right after, in the same hand-off, so the
loop neither runs those statements nor waits a turn for them (docs/benchmarks.md, item 17). A
lock keeps the thread's transaction and the loop's group commits apart: the loop never waits
for it, a group commit that finds it taken moves to a thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, cast

from broker_adapter.replay import (
    Decision,
    Entry,
    EntryState,
    ReplayStoreError,
    decide,
)
from broker_adapter.turn_batch import TurnBatcher

_T = TypeVar("_T")
_I = TypeVar("_I")

_SCHEMA_VERSION = 1
# Column names are one letter because SQLite stores each row's column list only in the schema,
# not per row; the short names are for the eye of whoever opens the file: k key, d digest,
# s state, t owner token, l lease end, x expiry, r cached response. WITHOUT ROWID stores the row
# in the primary-key B-tree itself instead of beside a separate key index.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS replay (
    k BLOB PRIMARY KEY,
    d BLOB NOT NULL,
    s INTEGER NOT NULL,
    t BLOB,
    l INTEGER NOT NULL,
    x INTEGER NOT NULL,
    r BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replay_expiry ON replay (x);
"""
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


@dataclass(frozen=True, slots=True)
class SqliteStats:
    rows: int
    # Pages in use (file pages minus free pages) times the page size: what the rows cost on disk.
    bytes_used: int


class SqliteReplayStore:
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_ms: int = 5_000,
        purge_every: int = 128,
        purge_batch: int = 512,
        checkpoint_every: int = 1_000,
    ) -> None:
        if purge_every <= 0 or purge_batch < purge_every:
            # Purging fewer rows than are claimed between purges could never catch up.
            raise ValueError("purge_batch must be at least purge_every, both positive")
        self._busy_timeout_ms = busy_timeout_ms
        # With FULL every commit waits for an fsync (milliseconds), too long for the event loop.
        self._offload = synchronous == "FULL"
        self._purge_every = purge_every
        self._purge_batch = purge_batch
        self._claims_since_purge = 0
        self._checkpoint_every = checkpoint_every
        self._writes_since_checkpoint = 0
        self._checkpoint_task: asyncio.Future[None] | None = None
        self._path = str(path)
        # Group commit: the operations of one loop turn, one transaction. The batcher runs one
        # batch at a time, so inline and threaded batches never use the connection together.
        self._batches: TurnBatcher[_Op, object] = TurnBatcher(
            self._run_batch, lambda exc: ReplayStoreError(f"replay store: {exc!r}")
        )
        # Held by whoever runs a transaction on ``_conn``: the group commit (one batch at a
        # time on the loop or in a thread) or ``claim_many_sync`` (a consumer's thread).
        self._conn_lock = threading.Lock()
        # Guards the purge and checkpoint counters, which both of those update; held only for
        # the arithmetic, never across a statement.
        self._count_lock = threading.Lock()
        self._closed = False
        try:
            # The busy timeout is in force from the first statement: switching a new file to
            # WAL and creating the schema take the write lock, and several processes (or
            # threads) may be opening the same file at the same moment. Once open, calls on
            # the event loop never wait (timeout 0, below); a busy batch moves to a thread.
            self._conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False,
                timeout=busy_timeout_ms / 1000,
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            # Automatic checkpoints would run inside whichever commit crosses the threshold, on
            # the event loop thread; ``_maybe_checkpoint`` runs them in a thread instead.
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn.executescript(_SCHEMA)
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            elif version != _SCHEMA_VERSION:
                raise ReplayStoreError(f"replay store {path} has schema version {version}")
            self._set_busy_timeout(0)
            # Checkpoints wait for the write lock of other processes only briefly; they are
            # retried at the next threshold anyway.
            self._checkpointer = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=1.0
            )
            self._checkpointer.execute(f"PRAGMA synchronous={synchronous}")
        except sqlite3.Error as exc:
            raise ReplayStoreError(f"cannot open replay store {path}: {exc}") from exc

    # ---- ReplayStore protocol -------------------------------------------------------------

    async def claim(self, key: bytes, candidate: Entry, now_ms: int) -> Decision:
        self._count_claims(1, now_ms)
        return await self._run(lambda conn: self._claim(conn, key, candidate, now_ms))

    async def claim_many(
        self, items: Sequence[tuple[bytes, Entry]], now_ms: int
    ) -> list[Decision | Exception]:
        self._count_claims(len(items), now_ms)
        # One operation in the group commit for the whole list: one future, not one per item.
        return await self._run(lambda conn: _each(
            items, lambda item: self._claim(conn, item[0], item[1], now_ms)))

    async def complete(self, key: bytes, token: bytes, response: bytes | None, now_ms: int) -> bool:
        return await self._run(lambda conn: self._complete(conn, key, token, response, now_ms))

    async def complete_many(
        self, items: Sequence[tuple[bytes, bytes, bytes | None]], now_ms: int
    ) -> list[bool | Exception]:
        return await self._run(lambda conn: _each(
            items, lambda item: self._complete(conn, item[0], item[1], item[2], now_ms)))

    @property
    def claims_in_thread(self) -> bool:
        return True

    def claim_many_sync(
        self, items: Sequence[tuple[bytes, Entry]], now_ms: int
    ) -> list[Decision | Exception]:
        """``claim_many`` run in the calling thread, which must not be the event loop's: it may
        wait for the loop's transaction and, behind another process's write lock, for up to
        the busy timeout. Raises ``ReplayStoreError`` if the transaction failed."""
        ops = [_Op(lambda conn: _each(
            items, lambda item: self._claim(conn, item[0], item[1], now_ms)), False)]
        purge_limit = self._purge_due(len(items))
        if purge_limit is not None:
            # In the same transaction; a failing purge only leaves rows for the next one.
            ops.append(_Op(lambda conn: self._purge(conn, now_ms, purge_limit), False))
        try:
            with self._conn_lock:
                if self._closed:
                    raise ReplayStoreError("replay store is closed")
                results = self._transaction_batch_waiting(ops)
        except sqlite3.Error as exc:
            raise ReplayStoreError(f"replay store: {exc!r}") from exc
        # The checkpoint itself is started by the loop's next group commit (every claim is
        # followed by a completion or a release there), which sees these writes counted.
        self._count_writes(len(items))
        claimed = results[0]
        if isinstance(claimed, Exception):
            raise ReplayStoreError(f"replay store: {claimed!r}")
        return cast(list[Decision | Exception], claimed)

    def _count_claims(self, claims: int, now_ms: int) -> None:
        limit = self._purge_due(claims)
        if limit is not None:
            # Rides along in the same group commit; nobody waits for it. A failed purge only
            # leaves expired rows for the next one.
            purge = self._submit(lambda conn: self._purge(conn, now_ms, limit))
            purge.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _purge_due(self, claims: int) -> int | None:
        """Count ``claims``; returns how many rows to purge when a purge is due."""
        with self._count_lock:
            self._claims_since_purge += claims
            if self._claims_since_purge < self._purge_every:
                return None
            # Purge at least as many rows as were claimed since the last purge, so a burst of
            # large batches cannot outgrow it.
            limit = max(self._purge_batch, self._claims_since_purge)
            self._claims_since_purge = 0
            return limit

    async def release(self, key: bytes, token: bytes, now_ms: int) -> bool:
        return await self._run(lambda conn: self._release(conn, key, token, now_ms))

    async def close(self) -> None:
        self._closed = True
        await self._batches.drain()
        if self._checkpoint_task is not None:
            await asyncio.gather(self._checkpoint_task, return_exceptions=True)
        # A consumer thread may be inside ``claim_many_sync``: wait for it off the loop.
        await asyncio.to_thread(self._close_connections)

    def _close_connections(self) -> None:
        with self._conn_lock:
            self._conn.close()
        self._checkpointer.close()

    # ---- operations and introspection ----------------------------------------------------

    async def purge(self, now_ms: int, limit: int | None = None) -> int:
        """Delete expired rows now (at most ``limit``); returns how many were deleted."""
        # An unbounded purge can take long enough to matter, so it always runs in a thread.
        return await self._run(
            lambda conn: self._purge(conn, now_ms, limit if limit is not None else -1),
            offload=True,
        )

    async def stats(self) -> SqliteStats:
        return await self._run(self._stats)

    # ---- synchronous bodies (run inside a group-commit transaction) -----------------------

    def _claim(
        self, conn: sqlite3.Connection, key: bytes, candidate: Entry, now_ms: int
    ) -> Decision:
        existing = self._select(conn, key)
        decision = decide(existing, candidate.digest, now_ms)
        if decision.kind.claims:
            conn.execute(
                "INSERT OR REPLACE INTO replay (k, d, s, t, l, x, r) "
                "VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (
                    key,
                    candidate.digest,
                    int(candidate.state),
                    candidate.token,
                    candidate.lease_until_ms,
                    candidate.expires_at_ms,
                ),
            )
        return decision

    # Completing and releasing are one statement each: the WHERE clause is the ownership rule
    # of ``completed_entry`` and ``may_release`` (live, IN_PROGRESS, same token), as the Redis
    # store's Lua scripts state it too; the contract tests hold all stores to the same answers.
    # Reading the row first and deciding in Python cost a second statement per message.
    _OWNED = f"k = ? AND s = {int(EntryState.IN_PROGRESS)} AND t = ? AND x > ?"

    def _complete(
        self, conn: sqlite3.Connection, key: bytes, token: bytes, response: bytes | None,
        now_ms: int,
    ) -> bool:
        # A finished entry needs neither token nor lease: NULL and 0 take no row bytes.
        cursor = conn.execute(
            f"UPDATE replay SET s = {int(EntryState.DONE)}, t = NULL, l = 0, r = ? "
            f"WHERE {self._OWNED}",
            (response, key, token, now_ms),
        )
        return cursor.rowcount == 1

    def _release(self, conn: sqlite3.Connection, key: bytes, token: bytes, now_ms: int) -> bool:
        cursor = conn.execute(f"DELETE FROM replay WHERE {self._OWNED}", (key, token, now_ms))
        return cursor.rowcount == 1

    @staticmethod
    def _purge(conn: sqlite3.Connection, now_ms: int, limit: int) -> int:
        cursor = conn.execute(
            "DELETE FROM replay WHERE k IN (SELECT k FROM replay WHERE x <= ? LIMIT ?)",
            (now_ms, limit),
        )
        return cursor.rowcount

    @staticmethod
    def _stats(conn: sqlite3.Connection) -> SqliteStats:
        rows = conn.execute("SELECT count(*) FROM replay").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return SqliteStats(rows=rows, bytes_used=(pages - free) * page_size)

    @staticmethod
    def _select(conn: sqlite3.Connection, key: bytes) -> Entry | None:
        row = conn.execute("SELECT d, s, t, l, x, r FROM replay WHERE k = ?", (key,)).fetchone()
        if row is None:
            return None
        digest, state, token, lease_until, expires_at, response = row
        return Entry(
            digest=digest,
            state=EntryState(state),
            token=token or b"",
            lease_until_ms=lease_until,
            expires_at_ms=expires_at,
            response=response,
        )

    # ---- where the call runs: group commit ----------------------------------------------------

    async def _run(self, op: Callable[[sqlite3.Connection], _T], *, offload: bool = False) -> _T:
        """Queue ``op`` for the next group commit and wait for its own result."""
        return cast(_T, await self._submit(op, offload=offload))

    def _submit(
        self, op: Callable[[sqlite3.Connection], object], *, offload: bool = False
    ) -> asyncio.Future[object]:
        if self._closed:
            raise ReplayStoreError("replay store is closed")
        return self._batches.submit(_Op(op, offload))

    async def _run_batch(self, batch: list[_Op]) -> list[object | Exception]:
        # Never wait for the lock on the loop: a consumer thread holding it for its claim
        # transaction would stall every other task.
        inline = not (self._offload or any(op.offload for op in batch))
        if inline and self._conn_lock.acquire(blocking=False):
            try:
                results = self._transaction_batch(batch)
                self._maybe_checkpoint(len(batch))
                return results
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise
            finally:
                self._conn_lock.release()
        # Another process holds the write lock, a thread holds the connection, or every
        # commit fsyncs: wait off the loop.
        results = await asyncio.to_thread(self._run_waiting, batch)
        self._maybe_checkpoint(len(batch))
        return results

    def _transaction_batch(self, batch: list[_Op]) -> list[object | Exception]:
        """All of ``batch`` in one transaction. An operation that raises something other than
        an SQLite error fails alone (its statements are reads, or a single write that did not
        happen); an SQLite error rolls back the whole batch."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        results: list[object | Exception] = []
        try:
            for op in batch:
                try:
                    results.append(op.body(conn))
                except sqlite3.Error:
                    raise
                except Exception as exc:  # noqa: BLE001 - handed to that caller
                    results.append(exc)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    def _count_writes(self, writes: int) -> int:
        with self._count_lock:
            self._writes_since_checkpoint += writes
            return self._writes_since_checkpoint

    def _maybe_checkpoint(self, writes: int) -> None:
        if self._count_writes(writes) < self._checkpoint_every:
            return
        if self._checkpoint_task is not None and not self._checkpoint_task.done():
            return
        with self._count_lock:
            self._writes_since_checkpoint = 0
        self._checkpoint_task = asyncio.ensure_future(asyncio.to_thread(self._checkpoint))

    def _checkpoint(self) -> None:
        # PASSIVE copies what it can without waiting for, or blocking, the writer. A failure
        # only means the WAL grows until the next attempt, so it is not worth surfacing.
        try:
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass

    def _run_waiting(self, batch: list[_Op]) -> list[object | Exception]:
        with self._conn_lock:
            return self._transaction_batch_waiting(batch)

    def _transaction_batch_waiting(self, batch: list[_Op]) -> list[object | Exception]:
        """``_transaction_batch`` from a thread holding the lock: first without waiting for
        another process's write lock (the common case costs no PRAGMA), then waiting for it
        up to the busy timeout."""
        try:
            return self._transaction_batch(batch)
        except sqlite3.Error as exc:
            if not _is_busy(exc):
                raise
        self._set_busy_timeout(self._busy_timeout_ms)
        try:
            return self._transaction_batch(batch)
        finally:
            self._set_busy_timeout(0)

    def _set_busy_timeout(self, ms: int) -> None:
        self._conn.execute(f"PRAGMA busy_timeout={int(ms)}")


def _each(items: Sequence[_I], body: Callable[[_I], _T]) -> list[_T | Exception]:
    """``body`` for every item inside one transaction. An SQLite error fails the transaction
    (and so every item); any other error is that item's own answer."""
    out: list[_T | Exception] = []
    for item in items:
        try:
            out.append(body(item))
        except sqlite3.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to that item's caller
            out.append(exc)
    return out


@dataclass(frozen=True, slots=True)
class _Op:
    body: Callable[[sqlite3.Connection], object]
    # Run this operation's batch in a worker thread (long purges).
    offload: bool


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    # Extended codes (e.g. SQLITE_BUSY_SNAPSHOT) keep the primary code in the low byte.
    return code is not None and (code & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED)
