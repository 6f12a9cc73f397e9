"""AKMA context store contract, run against both implementations, plus SQLite at-rest encryption."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from network_side.context_store import (
    AkmaContext,
    ContextStore,
    MemoryContextStore,
    PutResult,
    RemovedContext,
    SqliteContextStore,
)
from network_side.errors import ConfigError, ConflictError, StoreIntegrityError

MASTER = bytes(range(100, 132))
K1, K2 = bytes([1]) * 32, bytes([2]) * 32


def ctx(
    a_kid: str, supi: str = "imsi-00101", key: bytes = K1, expires: int = 10_000
) -> AkmaContext:
    return AkmaContext(a_kid, supi, "msisdn-12345", key, created_at_ms=1_000, expires_at_ms=expires)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ContextStore]:
    s: ContextStore = (
        MemoryContextStore()
        if request.param == "memory"
        else SqliteContextStore(tmp_path / "ctx.db", master_key=MASTER)
    )
    yield s
    s.close()


def test_put_get(store: ContextStore) -> None:
    assert store.put(ctx("a@x.org")) == PutResult()
    assert store.get("a@x.org") == ctx("a@x.org")
    assert store.get("b@x.org") is None


def test_latest_context_per_supi_replaces_old(store: ContextStore) -> None:
    store.put(ctx("a@x.org"))
    store.record_fetch("a@x.org", "af1.example.com", 1_500)
    result = store.put(ctx("b@x.org", key=K2))
    assert result == PutResult("a@x.org", frozenset({"af1.example.com"}))
    assert store.get("a@x.org") is None
    assert store.get("b@x.org") == ctx("b@x.org", key=K2)
    assert store.fetchers("a@x.org") == frozenset()


def test_redelivered_register_is_idempotent(store: ContextStore) -> None:
    store.put(ctx("a@x.org"))
    store.record_fetch("a@x.org", "af1.example.com", 1_500)
    assert store.put(ctx("a@x.org", expires=20_000)) == PutResult()
    assert store.get("a@x.org") == ctx("a@x.org", expires=20_000)
    assert store.fetchers("a@x.org") == {"af1.example.com"}


def test_same_akid_for_other_supi_is_a_conflict(store: ContextStore) -> None:
    store.put(ctx("a@x.org", supi="imsi-00101"))
    with pytest.raises(ConflictError):
        store.put(ctx("a@x.org", supi="imsi-00102", key=K2))
    assert store.get("a@x.org") == ctx("a@x.org", supi="imsi-00101")


def test_other_supis_are_independent(store: ContextStore) -> None:
    store.put(ctx("a@x.org", supi="imsi-00101"))
    store.put(ctx("b@x.org", supi="imsi-00102"))
    assert store.get("a@x.org") is not None and store.get("b@x.org") is not None


def test_remove_by_supi_returns_fetchers(store: ContextStore) -> None:
    store.put(ctx("a@x.org"))
    store.record_fetch("a@x.org", "af1.example.com", 1_500)
    store.record_fetch("a@x.org", "af2.example.com", 1_600)
    store.record_fetch("a@x.org", "af1.example.com", 1_700)  # idempotent
    assert store.fetchers("a@x.org") == {"af1.example.com", "af2.example.com"}
    removed = store.remove_by_supi("imsi-00101")
    assert removed == RemovedContext("a@x.org", frozenset({"af1.example.com", "af2.example.com"}))
    assert store.get("a@x.org") is None
    assert store.remove_by_supi("imsi-00101") is None


def test_fetch_for_unknown_context_is_not_recorded(store: ContextStore) -> None:
    store.record_fetch("ghost@x.org", "af1.example.com", 1)
    assert store.fetchers("ghost@x.org") == frozenset()


def test_purge_expired(store: ContextStore) -> None:
    store.put(ctx("a@x.org", supi="imsi-00101", expires=5_000))
    store.put(ctx("b@x.org", supi="imsi-00102", expires=9_000))
    store.record_fetch("a@x.org", "af1.example.com", 1)
    assert store.purge_expired(5_000) == 1
    assert store.get("a@x.org") is None and store.get("b@x.org") is not None
    assert store.fetchers("a@x.org") == frozenset()
    # The SUPI is free again after its context was purged.
    assert store.put(ctx("c@x.org", supi="imsi-00101")) == PutResult()


def test_concurrent_registrations_keep_one_context_per_supi(store: ContextStore) -> None:
    def worker(n: int) -> None:
        for i in range(20):
            store.put(ctx(f"{n}-{i}@x.org"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live = [f"{n}-{i}@x.org" for n in range(4) for i in range(20) if store.get(f"{n}-{i}@x.org")]
    assert len(live) == 1


# ---- SQLite specifics -------------------------------------------------------------------------


def test_k_akma_is_encrypted_at_rest(tmp_path: Path) -> None:
    path = tmp_path / "ctx.db"
    s = SqliteContextStore(path, master_key=MASTER)
    s.put(ctx("a@x.org", key=K2))
    s.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert K2 not in raw and K2.hex().encode() not in raw
    with sqlite3.connect(path) as db:
        (blob,) = db.execute("SELECT k_akma_sealed FROM akma_context").fetchone()
    assert blob[0] == 1 and len(blob) == 1 + 12 + 32 + 16


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ctx.db"
    s = SqliteContextStore(path, master_key=MASTER)
    s.put(ctx("a@x.org"))
    s.record_fetch("a@x.org", "af1.example.com", 5)
    s.close()
    s2 = SqliteContextStore(path, master_key=MASTER)
    assert s2.get("a@x.org") == ctx("a@x.org")
    assert s2.fetchers("a@x.org") == {"af1.example.com"}
    s2.close()


def test_wrong_master_key_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "ctx.db"
    s = SqliteContextStore(path, master_key=MASTER)
    s.put(ctx("a@x.org"))
    s.close()
    other = SqliteContextStore(path, master_key=bytes(32))
    with pytest.raises(StoreIntegrityError):
        other.get("a@x.org")
    other.close()


def test_swapped_rows_are_detected(tmp_path: Path) -> None:
    """AAD = A-KID || SUPI: moving a sealed key to another subscriber's row must fail."""
    path = tmp_path / "ctx.db"
    s = SqliteContextStore(path, master_key=MASTER)
    s.put(ctx("a@x.org", supi="imsi-00101", key=K1))
    s.put(ctx("b@x.org", supi="imsi-00102", key=K2))
    with sqlite3.connect(path) as db:
        (blob_a,) = db.execute(
            "SELECT k_akma_sealed FROM akma_context WHERE a_kid='a@x.org'"
        ).fetchone()
        db.execute("UPDATE akma_context SET k_akma_sealed=? WHERE a_kid='b@x.org'", (blob_a,))
    with pytest.raises(StoreIntegrityError):
        s.get("b@x.org")
    # Changing only the SUPI column of a row is caught the same way.
    with sqlite3.connect(path) as db:
        db.execute("UPDATE akma_context SET supi='imsi-00199' WHERE a_kid='a@x.org'")
    with pytest.raises(StoreIntegrityError):
        s.get("a@x.org")
    s.close()


def test_nonces_are_fresh_per_write(tmp_path: Path) -> None:
    seen: list[bytes] = []

    def nonces(n: int) -> bytes:
        value = len(seen).to_bytes(n, "big")
        seen.append(value)
        return value

    s = SqliteContextStore(tmp_path / "ctx.db", master_key=MASTER, nonce_source=nonces)
    s.put(ctx("a@x.org"))
    s.put(ctx("a@x.org"))
    assert len(set(seen)) == 2
    assert s.get("a@x.org") == ctx("a@x.org")
    s.close()


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(33)])
def test_master_key_must_be_256_bits(tmp_path: Path, key: bytes) -> None:
    with pytest.raises(ConfigError):
        SqliteContextStore(tmp_path / "ctx.db", master_key=key)


def test_repr_hides_k_akma() -> None:
    assert K2.hex() not in repr(ctx("a@x.org", key=K2)) and repr(K2) not in repr(ctx("a", key=K2))
