"""SQLite replay store: the default, one file on disk that survives restarts.

Each claim is one ``BEGIN IMMEDIATE`` transaction (read the row, ``decide``, write), so several
processes may share the file and exactly one of them wins a key. WAL journaling lets readers
run beside the writer; ``synchronous=NORMAL`` survives a crashed process (the case that matters
for redelivery) but may lose the last commits on power loss, after which at most those messages
are processed again (handlers are idempotent); pass ``synchronous="FULL"`` to close that gap at
the cost of an fsync per claim.

Calls run on the event loop thread: an uncontended claim takes about 0.1 ms (see
docs/replay.md), less than the hand-off to a worker thread costs (about 0.28 ms here). Two things could still stall the loop for
milliseconds, and both are moved off it: when another process holds the write lock, the call
moves to a worker thread and waits there with a busy timeout; and WAL checkpoints (which fsync)
are not left to SQLite's automatic checkpoint inside some unlucky commit but run from a second
connection in a worker thread, which in WAL mode does not block our writes. With
``synchronous="FULL"`` every commit fsyncs (about 2 ms here), so then every call runs in a thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from broker_adapter.replay import (
    Decision,
    Entry,
    EntryState,
    ReplayStoreError,
    completed_entry,
    decide,
    may_release,
)

_T = TypeVar("_T")

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
        # Calls that moved to a thread hold this lock; calls on the loop thread take it too so
        # that they never use the connection while a thread is using it.
        self._lock = asyncio.Lock()
        try:
            self._conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=0
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            self._set_busy_timeout(busy_timeout_ms)
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
        decision = await self._run(lambda: self._claim(key, candidate, now_ms))
        self._claims_since_purge += 1
        if self._claims_since_purge >= self._purge_every:
            self._claims_since_purge = 0
            await self._run(lambda: self._purge(now_ms, self._purge_batch))
        return decision

    async def complete(self, key: bytes, token: bytes, response: bytes | None, now_ms: int) -> bool:
        return await self._run(lambda: self._complete(key, token, response, now_ms))

    async def release(self, key: bytes, token: bytes, now_ms: int) -> bool:
        return await self._run(lambda: self._release(key, token, now_ms))

    async def close(self) -> None:
        async with self._lock:
            if self._checkpoint_task is not None:
                await asyncio.gather(self._checkpoint_task, return_exceptions=True)
            self._conn.close()
            self._checkpointer.close()

    # ---- operations and introspection ----------------------------------------------------

    async def purge(self, now_ms: int, limit: int | None = None) -> int:
        """Delete expired rows now (at most ``limit``); returns how many were deleted."""
        # An unbounded purge can take long enough to matter, so it always runs in a thread.
        return await self._run(
            lambda: self._purge(now_ms, limit if limit is not None else -1), offload=True
        )

    async def stats(self) -> SqliteStats:
        return await self._run(self._stats)

    # ---- synchronous bodies (each one transaction) ---------------------------------------

    def _claim(self, key: bytes, candidate: Entry, now_ms: int) -> Decision:
        def body(conn: sqlite3.Connection) -> Decision:
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

        return self._transaction(body)

    def _complete(self, key: bytes, token: bytes, response: bytes | None, now_ms: int) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            done = completed_entry(self._select(conn, key), token, response, now_ms)
            if done is None:
                return False
            # A finished entry needs neither token nor lease: NULL and 0 take no row bytes.
            conn.execute(
                "UPDATE replay SET s = ?, t = NULL, l = 0, r = ? WHERE k = ?",
                (int(EntryState.DONE), done.response, key),
            )
            return True

        return self._transaction(body)

    def _release(self, key: bytes, token: bytes, now_ms: int) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            if not may_release(self._select(conn, key), token, now_ms):
                return False
            conn.execute("DELETE FROM replay WHERE k = ?", (key,))
            return True

        return self._transaction(body)

    def _purge(self, now_ms: int, limit: int) -> int:
        def body(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM replay WHERE k IN (SELECT k FROM replay WHERE x <= ? LIMIT ?)",
                (now_ms, limit),
            )
            return cursor.rowcount

        return self._transaction(body)

    def _stats(self) -> SqliteStats:
        conn = self._conn
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

    def _transaction(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    # ---- where the call runs ---------------------------------------------------------------

    async def _run(self, op: Callable[[], _T], *, offload: bool = False) -> _T:
        async with self._lock:
            result = await self._run_locked(op, offload or self._offload)
        self._maybe_checkpoint()
        return result

    async def _run_locked(self, op: Callable[[], _T], offload: bool) -> _T:
        if not offload:
            try:
                return op()
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise ReplayStoreError(f"replay store: {exc}") from exc
        # Another process holds the write lock: wait for it off the event loop.
        try:
            return await asyncio.to_thread(self._run_waiting, op)
        except sqlite3.Error as exc:
            raise ReplayStoreError(f"replay store: {exc}") from exc

    def _maybe_checkpoint(self) -> None:
        self._writes_since_checkpoint += 1
        if self._writes_since_checkpoint < self._checkpoint_every:
            return
        if self._checkpoint_task is not None and not self._checkpoint_task.done():
            return
        self._writes_since_checkpoint = 0
        self._checkpoint_task = asyncio.ensure_future(asyncio.to_thread(self._checkpoint))

    def _checkpoint(self) -> None:
        # PASSIVE copies what it can without waiting for, or blocking, the writer. A failure
        # only means the WAL grows until the next attempt, so it is not worth surfacing.
        try:
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass

    def _run_waiting(self, op: Callable[[], _T]) -> _T:
        self._set_busy_timeout(self._busy_timeout_ms)
        try:
            return op()
        finally:
            self._set_busy_timeout(0)

    def _set_busy_timeout(self, ms: int) -> None:
        self._conn.execute(f"PRAGMA busy_timeout={int(ms)}")


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    # Extended codes (e.g. SQLITE_BUSY_SNAPSHOT) keep the primary code in the low byte.
    return code is not None and (code & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED)
