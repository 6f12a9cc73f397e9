"""Redis store against a real Redis: shared state between guards, atomic claims, expiry.

Uses AKMA_TEST_REDIS_URL or the machine's Redis at 127.0.0.1:6379, under a key prefix unique to
the test and deleted afterwards. Without a reachable Redis the tests are skipped, except under
CI=true, where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from broker_adapter.replay import (
    Claim,
    ClaimOutcome,
    ClaimRequest,
    ReplayConflictError,
    ReplayGuard,
    ReplayStore,
    ReplayStoreError,
)
from broker_adapter.replay_stores import RedisReplayStore, system_clock_ms
from broker_adapter.runtime import SecuritySettings, _open_store
from tests.conftest import _unavailable
from tests.unit.test_replay_contract import StoreContract, ThreadClaimContract, make_guard

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("AKMA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _connect() -> Redis:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        message = f"Redis not reachable at {REDIS_URL} ({exc}); set AKMA_TEST_REDIS_URL"
        _unavailable(message)  # fails under CI (CI=true/1/yes), skips elsewhere
    return client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prefix() -> str:
    return f"akma-test:replay:{uuid.uuid4().hex}:"


@pytest.fixture
async def redis_client(prefix: str) -> AsyncIterator[Redis]:
    client = await _connect()
    yield client
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


class TestRedisContract(StoreContract):
    @pytest.fixture
    async def store(self, redis_client: Redis, prefix: str) -> ReplayStore:
        return RedisReplayStore(redis_client, prefix)


class TestRedisPerKeyContract(StoreContract):
    """One script call per message, as on a Redis Cluster (a script may only touch keys of one
    hash slot there): the same rules as with a batch's claims in one call."""

    @pytest.fixture
    async def store(self, redis_client: Redis, prefix: str) -> ReplayStore:
        return RedisReplayStore(redis_client, prefix, batch_scripts=False)


async def test_batch_scripts_lost_by_the_server_are_loaded_again(
    redis_client: Redis, prefix: str
) -> None:
    guard = make_guard(RedisReplayStore(redis_client, prefix), system_clock_ms)
    requests = [ClaimRequest("af1", os.urandom(16), os.urandom(32), system_clock_ms())
                for _ in range(4)]
    await redis_client.script_flush()
    claims = await guard.claim_many(requests)
    assert [c.outcome for c in claims if isinstance(c, Claim)] == [ClaimOutcome.PROCESS] * 4
    await redis_client.script_flush()
    assert await guard.complete_many([(c, b"r") for c in claims if isinstance(c, Claim)]) == [
        True] * 4
    again = await guard.claim_many(requests)
    assert [c.cached_response for c in again if isinstance(c, Claim)] == [b"r"] * 4


@pytest.fixture
def sync_client(redis_client: Redis) -> Iterator[SyncRedis]:
    # ``redis_client`` first: it skips (or fails under CI) when Redis is not reachable.
    client = SyncRedis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    yield client
    client.close()


class TestRedisThreadClaimContract(ThreadClaimContract):
    """The same rules when batches are claimed with the blocking client from a thread (a
    consumer's envelope thread), beside the loop's pipelines."""

    @pytest.fixture
    async def store(self, redis_client: Redis, sync_client: SyncRedis,
                    prefix: str) -> ReplayStore:
        return RedisReplayStore(redis_client, prefix, sync_client=sync_client)


async def test_thread_claims_need_the_blocking_client(
    redis_client: Redis, sync_client: SyncRedis, prefix: str
) -> None:
    assert not make_guard(RedisReplayStore(redis_client, prefix), system_clock_ms).claims_in_thread
    store = RedisReplayStore(redis_client, prefix, sync_client=sync_client)
    guard = make_guard(store, system_clock_ms)
    requests = [ClaimRequest("af1", os.urandom(16), os.urandom(32), system_clock_ms())
                for _ in range(3)]
    # As after a Redis restart: the scripts are gone, the thread's pipeline loads them again.
    sync_client.script_flush()
    claims = await asyncio.to_thread(guard.claim_many_sync, requests)
    assert [c.outcome for c in claims if isinstance(c, Claim)] == [ClaimOutcome.PROCESS] * 3
    again = await guard.claim_many(requests)
    assert [c.outcome for c in again if isinstance(c, Claim)] == (
        [ClaimOutcome.DUPLICATE_IN_PROGRESS] * 3)
    # A server that cannot be reached is a store error, not a hang of the thread.
    dead = SyncRedis(host="127.0.0.1", port=_free_port(), socket_connect_timeout=1,
                     socket_timeout=1)
    try:
        with pytest.raises(ReplayStoreError):
            make_guard(RedisReplayStore(redis_client, prefix, sync_client=dead),
                       system_clock_ms).claim_many_sync(requests[:1])
    finally:
        dead.close()


async def test_two_guards_on_two_clients_share_state(redis_client: Redis, prefix: str) -> None:
    other_client = await _connect()
    try:
        a = make_guard(RedisReplayStore(redis_client, prefix), system_clock_ms)
        b = make_guard(RedisReplayStore(other_client, prefix), system_clock_ms)
        msg_id, dig, stamp = os.urandom(16), os.urandom(32), system_clock_ms()
        claim = await a.claim("af1", msg_id, dig, stamp)
        assert claim.outcome is ClaimOutcome.PROCESS
        assert (await b.claim("af1", msg_id, dig, stamp)).outcome is (
            ClaimOutcome.DUPLICATE_IN_PROGRESS
        )
        assert await a.complete(claim, b"reply")
        seen = await b.claim("af1", msg_id, dig, stamp)
        assert seen.outcome is ClaimOutcome.DUPLICATE_DONE and seen.cached_response == b"reply"
        with pytest.raises(ReplayConflictError):
            await b.claim("af1", msg_id, os.urandom(32), stamp)
    finally:
        await other_client.aclose()


async def test_scripts_lost_by_the_server_are_loaded_again(
    redis_client: Redis, prefix: str
) -> None:
    guard = make_guard(RedisReplayStore(redis_client, prefix), system_clock_ms)
    first = await guard.claim("af1", os.urandom(16), os.urandom(32), system_clock_ms())
    assert first.outcome is ClaimOutcome.PROCESS
    # As after a Redis restart: every cached script is gone, the next EVALSHA gets NOSCRIPT.
    await redis_client.script_flush()
    again = await asyncio.gather(
        *(guard.claim("af1", os.urandom(16), os.urandom(32), system_clock_ms()) for _ in range(5)),
        guard.complete(first),
    )
    assert [c.outcome for c in again[:5]] == [ClaimOutcome.PROCESS] * 5
    assert again[5] is True


async def test_only_one_of_many_concurrent_claimers_processes(
    redis_client: Redis, prefix: str
) -> None:
    clients = [await _connect() for _ in range(4)]
    try:
        guards = [
            make_guard(RedisReplayStore(c, prefix), system_clock_ms)
            for c in clients
            for _ in range(5)
        ]
        for _ in range(20):
            msg_id, dig, stamp = os.urandom(16), os.urandom(32), system_clock_ms()
            claims = await asyncio.gather(*(g.claim("af1", msg_id, dig, stamp) for g in guards))
            winners = [c for c in claims if c.outcome is ClaimOutcome.PROCESS]
            assert len(winners) == 1
    finally:
        for c in clients:
            await c.aclose()


async def test_entries_expire_after_window_plus_two_skews(redis_client: Redis, prefix: str) -> None:
    store = RedisReplayStore(redis_client, prefix)
    guard = ReplayGuard(
        store, window_ms=200, skew_ms=50, in_progress_lease_ms=100, clock=system_clock_ms
    )
    stamp = system_clock_ms()
    done = await guard.claim("af1", os.urandom(16), os.urandom(32), stamp)
    busy = await guard.claim("af1", os.urandom(16), os.urandom(32), stamp)
    assert await guard.complete(done, b"x")
    for claim in (done, busy):
        ttl = await redis_client.pttl(store.redis_key(claim.key))
        assert 0 < ttl <= 300  # completing kept the expiry (KEEPTTL), it did not reset it
    await asyncio.sleep(0.45)
    for claim in (done, busy):
        assert not await redis_client.exists(store.redis_key(claim.key))
    # The owner of an expired entry can no longer complete it.
    assert not await guard.complete(busy)


async def test_memory_per_key_within_budget(redis_client: Redis, prefix: str) -> None:
    store = RedisReplayStore(redis_client)  # the default prefix, as deployed
    guard = make_guard(store, system_clock_ms)
    stamp = system_clock_ms()
    busy = await guard.claim("af1.example.com", os.urandom(16), os.urandom(32), stamp)
    done = await guard.claim("af1.example.com", os.urandom(16), os.urandom(32), stamp)
    await guard.complete(done)
    try:
        for claim in (busy, done):
            usage = await redis_client.memory_usage(store.redis_key(claim.key))
            assert usage is not None and usage <= 256
    finally:
        await redis_client.delete(store.redis_key(busy.key), store.redis_key(done.key))


async def test_unreachable_redis_is_a_store_error() -> None:
    # No client-side retries: the point is what the store makes of the final failure.
    client = Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        guard = make_guard(RedisReplayStore(client), system_clock_ms)
        with pytest.raises(ReplayStoreError) as info:
            await guard.claim("af1", os.urandom(16), os.urandom(32), system_clock_ms())
        assert info.value.code == "replay_store_unavailable"
        # The batch path fails as a whole, with the same coded error.
        with pytest.raises(ReplayStoreError):
            await guard.claim_many(
                [ClaimRequest("af1", os.urandom(16), os.urandom(32), system_clock_ms())])
    finally:
        await client.aclose()


async def test_text_mode_client_refused() -> None:
    client = Redis(decode_responses=True)
    try:
        with pytest.raises(ValueError):
            RedisReplayStore(client)
    finally:
        await client.aclose()


@pytest.mark.parametrize(("claim_in_thread", "expected"), [(True, True), (False, False)])
async def test_the_runtime_gives_the_redis_store_its_blocking_client(
    redis_client: Redis, prefix: str, tmp_path: Path, claim_in_thread: bool, expected: bool
) -> None:
    settings = SecuritySettings(key_dir=tmp_path, trust_dir=tmp_path, replay_store="redis",
                                replay_redis_url=REDIS_URL, replay_redis_prefix=prefix,
                                claim_in_thread=claim_in_thread)
    store = await _open_store(settings)
    try:
        assert isinstance(store, RedisReplayStore) and store.claims_in_thread is expected
    finally:
        await store.close()
