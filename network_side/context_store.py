"""AKMA context store: one interface, a SQLite default with K_AKMA encrypted at rest, a test double.

A context is {A-KID, SUPI, GPSI?, K_AKMA, created_at, expires_at}. The store keeps the latest
context per SUPI (a re-authentication replaces the old A-KID atomically), finds contexts by A-KID,
removes them by SUPI, and remembers which AFs fetched a K_AF for an A-KID so the AAnF can notify
them when the context goes away.

The interface is synchronous on purpose: SQLite answers these point queries in microseconds, far
below the cost of one envelope, so an executor hop would cost more than it saves.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from network_side.errors import ConfigError, ConflictError, StoreError, StoreIntegrityError

__all__ = [
    "AkmaContext",
    "ContextStore",
    "MemoryContextStore",
    "PutResult",
    "RemovedContext",
    "SqliteContextStore",
]


@dataclass(frozen=True)
class AkmaContext:
    """One UE's AKMA context as the AAnF holds it. Times are unix milliseconds."""

    a_kid: str
    supi: str
    gpsi: str | None
    k_akma: bytes = field(repr=False)
    created_at_ms: int
    expires_at_ms: int


@dataclass(frozen=True)
class PutResult:
    """What a ``put`` displaced: the SUPI's previous A-KID (if it differed) and its fetchers."""

    replaced_a_kid: str | None = None
    replaced_fetchers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RemovedContext:
    a_kid: str
    fetchers: frozenset[str]


class ContextStore(Protocol):
    """What the AAnF needs from a store. Implementations must make ``put`` and
    ``remove_by_supi`` atomic, since concurrent workers may register and remove the same SUPI."""

    def put(self, ctx: AkmaContext) -> PutResult:
        """Store ``ctx`` as the SUPI's only context, dropping any older one and its fetch records.

        Re-putting the same A-KID for the same SUPI (a redelivered registration) overwrites it in
        place and keeps its fetch records. The same A-KID for a different SUPI raises
        ``ConflictError``: it must never silently take over another subscriber's context.
        """
        ...

    def get(self, a_kid: str) -> AkmaContext | None: ...

    def remove_by_supi(self, supi: str) -> RemovedContext | None: ...

    def record_fetch(self, a_kid: str, af_identity: str, at_ms: int) -> None:
        """Remember that ``af_identity`` received a K_AF for ``a_kid`` (idempotent)."""
        ...

    def fetchers(self, a_kid: str) -> frozenset[str]: ...

    def purge_expired(self, now_ms: int) -> int:
        """Delete contexts expired at ``now_ms`` and their fetch records; return how many."""
        ...

    def close(self) -> None: ...


# ---- in-memory test double ------------------------------------------------------------------


class MemoryContextStore:
    """Dictionary-backed store with the same semantics as the SQLite one (keys kept in clear)."""

    def __init__(self) -> None:
        self._by_akid: dict[str, AkmaContext] = {}
        self._akid_by_supi: dict[str, str] = {}
        self._fetchers: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def put(self, ctx: AkmaContext) -> PutResult:
        with self._lock:
            existing = self._by_akid.get(ctx.a_kid)
            if existing is not None and existing.supi != ctx.supi:
                raise ConflictError("A-KID already registered for another SUPI")
            old_akid = self._akid_by_supi.get(ctx.supi)
            result = PutResult()
            if old_akid is not None and old_akid != ctx.a_kid:
                del self._by_akid[old_akid]
                result = PutResult(old_akid, frozenset(self._fetchers.pop(old_akid, set())))
            self._by_akid[ctx.a_kid] = ctx
            self._akid_by_supi[ctx.supi] = ctx.a_kid
            return result

    def get(self, a_kid: str) -> AkmaContext | None:
        with self._lock:
            return self._by_akid.get(a_kid)

    def remove_by_supi(self, supi: str) -> RemovedContext | None:
        with self._lock:
            a_kid = self._akid_by_supi.pop(supi, None)
            if a_kid is None:
                return None
            del self._by_akid[a_kid]
            return RemovedContext(a_kid, frozenset(self._fetchers.pop(a_kid, set())))

    def record_fetch(self, a_kid: str, af_identity: str, at_ms: int) -> None:
        with self._lock:
            if a_kid in self._by_akid:
                self._fetchers.setdefault(a_kid, set()).add(af_identity)

    def fetchers(self, a_kid: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._fetchers.get(a_kid, set()))

    def purge_expired(self, now_ms: int) -> int:
        with self._lock:
            expired = [c for c in self._by_akid.values() if c.expires_at_ms <= now_ms]
            for ctx in expired:
                del self._by_akid[ctx.a_kid]
                del self._akid_by_supi[ctx.supi]
                self._fetchers.pop(ctx.a_kid, None)
            return len(expired)

    def close(self) -> None:
        pass


# ---- SQLite default -------------------------------------------------------------------------

_T = TypeVar("_T")
_MASTER_KEY_LEN: Final = 32  # AES-256

#: Format marker of an encrypted K_AKMA blob, so the scheme can change without guessing.
_BLOB_VERSION: Final = 1
_NONCE_LEN: Final = 12
_AAD_LABEL: Final = b"akma-context-v1"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS akma_context (
    a_kid          TEXT PRIMARY KEY,
    supi           TEXT NOT NULL UNIQUE,
    gpsi           TEXT,
    k_akma_sealed  BLOB NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS akma_context_expiry ON akma_context (expires_at_ms);
CREATE TABLE IF NOT EXISTS akma_fetch (
    a_kid          TEXT NOT NULL,
    af_identity    TEXT NOT NULL,
    fetched_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (a_kid, af_identity)
);
"""


def _aad(a_kid: str, supi: str) -> bytes:
    """AAD binding a sealed K_AKMA to its row. Each part is length-prefixed, so no two different
    (A-KID, SUPI) pairs give the same AAD and a sealed key cannot be moved to another row."""
    a, s = a_kid.encode("utf-8"), supi.encode("utf-8")
    return _AAD_LABEL + struct.pack(">H", len(a)) + a + struct.pack(">H", len(s)) + s


class SqliteContextStore:
    """Contexts in one SQLite file; K_AKMA sealed with AES-256-GCM under ``master_key``.

    ``nonce_source`` exists so tests can inject randomness; production uses ``os.urandom``. A
    random 96-bit nonce per write is safe far beyond any realistic number of registrations.
    One connection is shared under a lock, so the store may be used from several threads.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        master_key: bytes,
        nonce_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not isinstance(master_key, bytes) or len(master_key) != _MASTER_KEY_LEN:
            raise ConfigError("context store master key must be 32 bytes (AES-256)")
        self._aead = AESGCM(master_key)
        self._nonce_source = nonce_source
        self._lock = threading.Lock()
        try:
            # Autocommit mode: every multi-statement change below runs in an explicit
            # BEGIN IMMEDIATE, which takes the write lock up front so two processes sharing the
            # file cannot both read the old A-KID and then both write.
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL is safe against corruption and against a crash of this process;
            # only a power loss can drop the last commits. That costs at worst a "not found" until
            # the UE re-authenticates, and it takes an fsync off every registration and fetch.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open context store: {exc}") from None

    # -- sealing --

    def _seal(self, ctx: AkmaContext) -> bytes:
        nonce = self._nonce_source(_NONCE_LEN)
        sealed = self._aead.encrypt(nonce, ctx.k_akma, _aad(ctx.a_kid, ctx.supi))
        return bytes([_BLOB_VERSION]) + nonce + sealed

    def _open(self, a_kid: str, supi: str, blob: bytes) -> bytes:
        if len(blob) < 1 + _NONCE_LEN + 16 or blob[0] != _BLOB_VERSION:
            raise StoreIntegrityError("sealed K_AKMA has an unknown format")
        nonce, sealed = blob[1 : 1 + _NONCE_LEN], blob[1 + _NONCE_LEN :]
        try:
            return self._aead.decrypt(nonce, sealed, _aad(a_kid, supi))
        except InvalidTag:
            raise StoreIntegrityError("sealed K_AKMA failed authentication") from None

    # -- operations --

    def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                raise StoreError(f"context store write failed: {exc}") from None

    def put(self, ctx: AkmaContext) -> PutResult:
        blob = self._seal(ctx)

        def tx(db: sqlite3.Connection) -> PutResult:
            row = db.execute(
                "SELECT supi FROM akma_context WHERE a_kid = ?", (ctx.a_kid,)
            ).fetchone()
            if row is not None and row[0] != ctx.supi:
                raise ConflictError("A-KID already registered for another SUPI")
            old = db.execute(
                "SELECT a_kid FROM akma_context WHERE supi = ?", (ctx.supi,)
            ).fetchone()
            result = PutResult()
            if old is not None and old[0] != ctx.a_kid:
                old_akid: str = old[0]
                result = PutResult(old_akid, self._fetchers_in(db, old_akid))
                db.execute("DELETE FROM akma_fetch WHERE a_kid = ?", (old_akid,))
                db.execute("DELETE FROM akma_context WHERE a_kid = ?", (old_akid,))
            db.execute(
                "INSERT INTO akma_context VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (a_kid) DO UPDATE"
                " SET gpsi = excluded.gpsi, k_akma_sealed = excluded.k_akma_sealed,"
                " created_at_ms = excluded.created_at_ms, expires_at_ms = excluded.expires_at_ms",
                (ctx.a_kid, ctx.supi, ctx.gpsi, blob, ctx.created_at_ms, ctx.expires_at_ms),
            )
            return result

        return self._write(tx)

    def _read_one(self, sql: str, params: tuple[object, ...]) -> tuple[Any, ...] | None:
        """One row of a plain read (no transaction, no write lock on the file)."""
        with self._lock:
            try:
                row: tuple[Any, ...] | None = self._db.execute(sql, params).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"context store read failed: {exc}") from None
        return row

    def get(self, a_kid: str) -> AkmaContext | None:
        row = self._read_one(
            "SELECT supi, gpsi, k_akma_sealed, created_at_ms, expires_at_ms"
            " FROM akma_context WHERE a_kid = ?",
            (a_kid,),
        )
        if row is None:
            return None
        supi, gpsi, blob, created, expires = row
        return AkmaContext(a_kid, supi, gpsi, self._open(a_kid, supi, blob), created, expires)

    def remove_by_supi(self, supi: str) -> RemovedContext | None:
        def tx(db: sqlite3.Connection) -> RemovedContext | None:
            row = db.execute("SELECT a_kid FROM akma_context WHERE supi = ?", (supi,)).fetchone()
            if row is None:
                return None
            a_kid: str = row[0]
            removed = RemovedContext(a_kid, self._fetchers_in(db, a_kid))
            db.execute("DELETE FROM akma_fetch WHERE a_kid = ?", (a_kid,))
            db.execute("DELETE FROM akma_context WHERE a_kid = ?", (a_kid,))
            return removed

        return self._write(tx)

    def record_fetch(self, a_kid: str, af_identity: str, at_ms: int) -> None:
        # Most fetches repeat an (A-KID, AF) pair already on record, and the first fetch time is
        # kept anyway: a plain read answers that without taking the write lock and committing.
        if self._read_one(
            "SELECT 1 FROM akma_fetch WHERE a_kid = ? AND af_identity = ?", (a_kid, af_identity)
        ) is not None:
            return

        def tx(db: sqlite3.Connection) -> None:
            # Only for a context that still exists, so a fetch racing a removal leaves no orphan.
            # The first fetch time is kept: repeated fetches then change nothing on disk.
            db.execute(
                "INSERT INTO akma_fetch SELECT ?, ?, ? WHERE EXISTS"
                " (SELECT 1 FROM akma_context WHERE a_kid = ?)"
                " ON CONFLICT (a_kid, af_identity) DO NOTHING",
                (a_kid, af_identity, at_ms, a_kid),
            )

        self._write(tx)

    @staticmethod
    def _fetchers_in(db: sqlite3.Connection, a_kid: str) -> frozenset[str]:
        rows = db.execute("SELECT af_identity FROM akma_fetch WHERE a_kid = ?", (a_kid,)).fetchall()
        return frozenset(r[0] for r in rows)

    def fetchers(self, a_kid: str) -> frozenset[str]:
        with self._lock:
            try:
                return self._fetchers_in(self._db, a_kid)
            except sqlite3.Error as exc:
                raise StoreError(f"context store read failed: {exc}") from None

    def purge_expired(self, now_ms: int) -> int:
        def tx(db: sqlite3.Connection) -> int:
            db.execute(
                "DELETE FROM akma_fetch WHERE a_kid IN"
                " (SELECT a_kid FROM akma_context WHERE expires_at_ms <= ?)",
                (now_ms,),
            )
            cur = db.execute("DELETE FROM akma_context WHERE expires_at_ms <= ?", (now_ms,))
            return cur.rowcount

        return self._write(tx)

    def close(self) -> None:
        with self._lock:
            self._db.close()
