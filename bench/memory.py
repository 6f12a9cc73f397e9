"""Part 5: bytes of replay state per live message id, for the SQLite and the Redis store.

Each id goes through the consumer's real sequence (claim, then complete without a cached
response: the state a consumed message leaves behind for the rest of its window). SQLite: used
pages x page size / ids after a WAL checkpoint (the database file, index included). Redis: the
sum of ``MEMORY USAGE`` over our keys / ids (the value, key and per-key overhead Redis reports;
the allocator's rounding is included by Redis itself).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from redis import Redis

from bench.redis_util import RedisPrefix
from broker_adapter.clock import system_clock_ms
from broker_adapter.envelope import DEFAULT_SKEW_MS, DEFAULT_WINDOW_MS
from broker_adapter.replay import ClaimRequest, ReplayGuard, ReplayStore
from broker_adapter.replay_stores.redis import RedisReplayStore
from broker_adapter.replay_stores.sqlite import SqliteReplayStore

SENDER = "af1.example.com"
# Ids per store call; the state each id leaves behind does not depend on it.
BATCH = 256


def _fill(store: ReplayStore, ids: int) -> None:
    guard = ReplayGuard(store, window_ms=DEFAULT_WINDOW_MS, skew_ms=DEFAULT_SKEW_MS,
                        in_progress_lease_ms=30_000, clock=system_clock_ms)
    now = system_clock_ms()
    for start in range(0, ids, BATCH):
        msg_ids = [os.urandom(16) for _ in range(min(BATCH, ids - start))]
        claims = guard.claim([ClaimRequest(SENDER, m, hashlib.sha256(m).digest(), now)
                              for m in msg_ids])
        failed = [c for c in claims if isinstance(c, Exception)]
        if failed:
            raise failed[0]
        guard.complete([(c, None) for c in claims if not isinstance(c, Exception)])


async def sqlite_bytes_per_id(path: Path, ids: int) -> dict[str, Any]:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    store = SqliteReplayStore(path)
    try:
        _fill(store, ids)
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM replay").fetchone()[0]
    finally:
        conn.close()
    return {
        "ids": rows,
        "page_size": page_size,
        "pages": pages,
        "bytes_per_id": (pages - free) * page_size / rows,
        "file_bytes_per_id": pages * page_size / rows,
    }


async def redis_bytes_per_id(redis: RedisPrefix, ids: int) -> dict[str, Any]:
    redis.clean()
    client = Redis.from_url(redis.url, decode_responses=False)
    store = RedisReplayStore(client, prefix=redis.prefix, owns_client=True)
    try:
        _fill(store, ids)
    finally:
        store.close()
    keys = redis.keys()
    pipe = redis.client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    usage = sum(int(u or 0) for u in pipe.execute())
    redis.clean()
    return {"ids": len(keys), "bytes_per_id": usage / max(1, len(keys)),
            "key_bytes": len(keys[0]) if keys else 0}


async def run_memory(work: Path, redis: RedisPrefix | None, ids: int) -> dict[str, Any]:
    out: dict[str, Any] = {"sqlite": await sqlite_bytes_per_id(work / "mem-replay.sqlite3", ids)}
    if redis is not None:
        # MEMORY USAGE is per key, so a few thousand keys give the same figure as many more.
        out["redis"] = await redis_bytes_per_id(redis, min(ids, 5000))
    out["replay_bytes_per_id"] = max(v["bytes_per_id"] for v in out.values())
    return out
