"""SQLite replay store: the default, one file on disk that survives restarts.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from broker_adapter.replay_entries import (
    Decision,
    Entry,
    EntryState,
    ReplayStoreError,
    decide,
)

_T = TypeVar("_T")
_I = TypeVar("_I")

_SCHEMA_VERSION = 1
# WAL pages after which a commit checkpoints by itself (about 40 MB at 4 KiB pages).
_BACKSTOP_CHECKPOINT_PAGES = 10_000
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

# Completing and releasing are one statement each: this WHERE clause is the ownership rule of
# ``completed_entry`` and ``may_release`` (live through x inclusive, IN_PROGRESS, same token), as
# the Redis store's Lua scripts state it too; the contract tests hold all stores alike.
# The f-strings below interpolate only these constants; values always go in as parameters.
_OWNED = f"k = ? AND s = {int(EntryState.IN_PROGRESS)} AND t = ? AND x >= ?"
# A finished entry needs neither token nor lease: NULL and 0 take no row bytes.
_COMPLETE = f"UPDATE replay SET s = {int(EntryState.DONE)}, t = NULL, l = 0, r = ? WHERE {_OWNED}"  # noqa: S608
_RELEASE = f"DELETE FROM replay WHERE {_OWNED}"  # noqa: S608 - constants only, see above
_CLAIM = "INSERT OR REPLACE INTO replay (k, d, s, t, l, x, r) VALUES (?, ?, ?, ?, ?, ?, NULL)"
# Expired means strictly before now (``is_expired``): the row must outlive its last instant.
_PURGE = "DELETE FROM replay WHERE k IN (SELECT k FROM replay WHERE x < ? LIMIT ?)"


@dataclass(frozen=True, slots=True)
class SqliteStats:
    rows: int
    # Pages in use (file pages minus free pages) times the page size: what the rows cost on disk.
    bytes_used: int


class SqliteReplayStore:
    """Replay entries in an SQLite file; blocking, one transaction per call.

    ``busy_timeout_ms`` bounds how long a call (possibly on the event loop) waits for another
    process's write lock before failing with ``ReplayStoreError``: keep it at a couple of seconds
    at most. Opening waits for the lock just as long (switching a new file to WAL and creating
    the schema write); a file still locked after that raises ``ReplayStoreError`` whose message
    contains "locked", which the caller may retry.

    Every ``purge_every`` claims, the claim transaction also deletes up to ``purge_batch``
    expired rows (at least as many as were claimed since the last purge).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        # Another process's write lock stalls a call, maybe on the event loop, at most ~2 s.
        busy_timeout_ms: int = 2_000,
        purge_every: int = 128,
        purge_batch: int = 512,
    ) -> None:
        if purge_every <= 0 or purge_batch < purge_every:
            # Purging fewer rows than are claimed between purges could never catch up.
            raise ValueError("purge_batch must be at least purge_every, both positive")
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms must not be negative")
        self._purge_every = purge_every
        self._purge_batch = purge_batch
        self._claims_since_purge = 0
        self._closed = False
        self._path = str(path)
        self._checkpointer: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False,
                timeout=busy_timeout_ms / 1000,
            )
        except sqlite3.Error as exc:
            raise ReplayStoreError(f"cannot open replay store {path}: {exc}") from exc
        try:
            self._init_schema(synchronous, path)
        except BaseException:
            self._conn.close()
            raise

    def _init_schema(self, synchronous: str, path: str | Path) -> None:
        conn = self._conn
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            # Checkpoints (which fsync) belong in ``checkpoint``, off the claim path; this is
            # only the backstop for a store nobody checkpoints.
            conn.execute(f"PRAGMA wal_autocheckpoint={_BACKSTOP_CHECKPOINT_PAGES}")
            conn.executescript(_SCHEMA)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise ReplayStoreError(f"cannot open replay store {path}: {exc}") from exc
        if version not in (0, _SCHEMA_VERSION):
            raise ReplayStoreError(f"replay store {path} has schema version {version}")

    def claim_many(
        self, items: Sequence[tuple[bytes, Entry]], now_ms: int
    ) -> list[Decision | Exception]:
        if not items:
            return []
        purge_limit = self._purge_due(len(items))

        def body(conn: sqlite3.Connection) -> list[Decision | Exception]:
            out = _each(items, lambda item: self._claim(conn, item[0], item[1], now_ms))
            if purge_limit is not None:
                _purge(conn, now_ms, purge_limit)
            return out

        return self._transaction(body)

    def complete_many(
        self, items: Sequence[tuple[bytes, bytes, bytes | None]], now_ms: int
    ) -> list[bool | Exception]:
        if not items:
            return []
        return self._transaction(lambda conn: _each(
            items, lambda item: _changed(conn, _COMPLETE, (item[2], item[0], item[1], now_ms))))

    def release_many(
        self, items: Sequence[tuple[bytes, bytes]], now_ms: int
    ) -> list[bool | Exception]:
        if not items:
            return []
        return self._transaction(lambda conn: _each(
            items, lambda item: _changed(conn, _RELEASE, (item[0], item[1], now_ms))))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
        with self._checkpoint_lock:  # after a checkpoint still running on its thread
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None

    def checkpoint(self) -> None:
        """Copy the WAL into the database from a second connection; in WAL mode a passive
        checkpoint never blocks claims, so call it from any thread other than the claims'."""
        with self._checkpoint_lock:
            if self._closed:
                return
            try:
                if self._checkpointer is None:
                    self._checkpointer = sqlite3.connect(
                        self._path, isolation_level=None, check_same_thread=False)
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                raise ReplayStoreError(f"checkpoint failed: {exc}") from exc

    def purge(self, now_ms: int, limit: int | None = None) -> int:
        """Delete expired rows now (at most ``limit``); returns how many were deleted."""
        return self._transaction(lambda conn: _purge(conn, now_ms, -1 if limit is None else limit))

    def stats(self) -> SqliteStats:
        try:
            with self._lock:
                conn = self._open_conn()
                rows = conn.execute("SELECT count(*) FROM replay").fetchone()[0]
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        except sqlite3.Error as exc:
            raise ReplayStoreError(f"replay store: {exc!r}") from exc
        return SqliteStats(rows=rows, bytes_used=(pages - free) * page_size)

    def _purge_due(self, claims: int) -> int | None:
        """Count ``claims``; returns how many rows to purge when a purge is due."""
        self._claims_since_purge += claims
        if self._claims_since_purge < self._purge_every:
            return None
        # At least as many rows as were claimed since the last purge, so a burst of large
        # batches cannot outgrow the purge.
        limit = max(self._purge_batch, self._claims_since_purge)
        self._claims_since_purge = 0
        return limit

    @staticmethod
    def _claim(conn: sqlite3.Connection, key: bytes, candidate: Entry, now_ms: int) -> Decision:
        decision = decide(_select(conn, key), candidate.digest, now_ms)
        if decision.kind.claims:
            conn.execute(_CLAIM, (
                key, candidate.digest, int(candidate.state), candidate.token,
                candidate.lease_until_ms, candidate.expires_at_ms,
            ))
        return decision

    def _transaction(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """``body`` in one ``BEGIN IMMEDIATE`` transaction; any SQLite error rolls all of it
        back and raises ``ReplayStoreError``."""
        # The loop and the envelope thread share the connection: one transaction at a time.
        with self._lock:
            conn = self._open_conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = body(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise ReplayStoreError(f"replay store: {exc!r}") from exc
        return result

    def _open_conn(self) -> sqlite3.Connection:
        if self._closed:
            raise ReplayStoreError("replay store is closed")
        return self._conn


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


def _changed(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> bool:
    return conn.execute(sql, params).rowcount == 1


def _purge(conn: sqlite3.Connection, now_ms: int, limit: int) -> int:
    return conn.execute(_PURGE, (now_ms, limit)).rowcount


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


def _rollback(conn: sqlite3.Connection) -> None:
    # The error that made us roll back is the one worth reporting.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
