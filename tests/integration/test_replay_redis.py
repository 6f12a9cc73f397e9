"""Redis store against a real Redis: what the shared contract cannot show (script recovery, key
lifetime, the cluster path, failures, memory per key).

The contract itself runs against Redis in ``tests/unit/test_replay_contract.py``. Uses
AKMA_TEST_REDIS_URL or the machine's Redis at 127.0.0.1:6379, under a key prefix unique to the
test and deleted afterwards. Without a reachable Redis the tests are skipped, except under
CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from broker_adapter.clock import system_clock_ms
from broker_adapter.replay import (
    Claim,
    ClaimOutcome,
    ClaimRequest,
    DecisionKind,
    Entry,
    EntryState,
    ReplayGuard,
    ReplayStoreError,
)
from broker_adapter.replay_stores import RedisReplayStore
from broker_adapter.replay_stores.redis import key_ttl_ms
from tests.unit import test_replay_contract as contract
from tests.unit.test_replay_contract import claim_one, complete_one, connect_redis, make_guard

pytestmark = pytest.mark.redis

# The contract's fixtures: a private key prefix, and a client that cleans it up.
redis_prefix = contract.redis_prefix
redis_client = contract.redis_client


def _requests(count: int) -> list[ClaimRequest]:
    return [ClaimRequest("af1", os.urandom(16), os.urandom(32), system_clock_ms())
            for _ in range(count)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("batch_scripts", [True, False])
def test_scripts_lost_by_the_server_are_loaded_again(
    redis_client: Redis, redis_prefix: str, batch_scripts: bool
) -> None:
    store = RedisReplayStore(redis_client, prefix=redis_prefix, batch_scripts=batch_scripts)
    guard = make_guard(store, system_clock_ms)
    requests = _requests(4)
    # As after a Redis restart: every cached script is gone, the next EVALSHA gets NOSCRIPT.
    redis_client.script_flush()
    claims = [c for c in guard.claim(requests) if isinstance(c, Claim)]
    assert [c.outcome for c in claims] == [ClaimOutcome.PROCESS] * 4
    redis_client.script_flush()
    assert guard.complete([(c, b"r") for c in claims[:3]]) == [True] * 3
    redis_client.script_flush()
    assert guard.release(claims) == [False, False, False, True]
    again = guard.claim(requests)
    assert [c.cached_response for c in again[:3] if isinstance(c, Claim)] == [b"r"] * 3
    assert isinstance(again[3], Claim) and again[3].outcome is ClaimOutcome.PROCESS


def test_many_clients_in_many_threads_process_each_id_once(
    redis_client: Redis, redis_prefix: str
) -> None:
    requests = _requests(100)
    results: list[list[Claim | Exception]] = [[] for _ in range(4)]

    def claimer(out: list[Claim | Exception], batch_scripts: bool) -> None:
        client = connect_redis()
        try:
            store = RedisReplayStore(client, prefix=redis_prefix, batch_scripts=batch_scripts)
            guard = make_guard(store, system_clock_ms)
            for start in range(0, len(requests), 10):
                out += guard.claim(requests[start:start + 10])
        finally:
            client.close()

    threads = [threading.Thread(target=claimer, args=(r, i % 2 == 0))
               for i, r in enumerate(results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for per_id in zip(*results, strict=True):
        outcomes = [c.outcome for c in per_id if isinstance(c, Claim)]
        assert len(outcomes) == 4 and outcomes.count(ClaimOutcome.PROCESS) == 1


def test_keys_live_through_the_entry_expiry_then_vanish(
    redis_client: Redis, redis_prefix: str
) -> None:
    store = RedisReplayStore(redis_client, prefix=redis_prefix)
    guard = ReplayGuard(
        store, window_ms=200, skew_ms=50, in_progress_lease_ms=100, clock=system_clock_ms
    )
    lifetime = guard.entry_lifetime_ms
    stamp = system_clock_ms()
    done = claim_one(guard, os.urandom(16), os.urandom(32), stamp)
    busy = claim_one(guard, os.urandom(16), os.urandom(32), stamp)
    assert complete_one(guard, done, b"x")
    for claim in (done, busy):
        ttl = redis_client.pttl(store.redis_key(claim.key))
        # Through expires_at itself (hence + 1); completing kept the expiry (KEEPTTL).
        assert lifetime - 100 < ttl <= lifetime + 1
    time.sleep((lifetime + 150) / 1000)
    for claim in (done, busy):
        assert not redis_client.exists(store.redis_key(claim.key))
    # The owner of an expired entry can no longer complete it.
    assert not complete_one(guard, busy)


def test_key_ttl_covers_the_expiry_instant() -> None:
    assert key_ttl_ms(1_000, 1_000) == 1
    assert key_ttl_ms(1_000, 400) == 601
    with pytest.raises(ValueError):
        key_ttl_ms(1_000, 1_001)


def test_a_claim_at_the_expiry_instant_is_stored(redis_client: Redis, redis_prefix: str) -> None:
    store = RedisReplayStore(redis_client, prefix=redis_prefix)
    now = system_clock_ms()
    entry = Entry(b"d" * 16, EntryState.IN_PROGRESS, b"T" * 8, now + 100, expires_at_ms=now)
    # One script call, so one instant for Redis: the key written first is there for the second.
    first, second = store.claim_many([(b"k" * 24, entry), (b"k" * 24, entry)], now)
    assert not isinstance(first, Exception) and first.kind is DecisionKind.PROCESS_NEW
    assert not isinstance(second, Exception)
    assert second.kind is DecisionKind.DUPLICATE_IN_PROGRESS
    [late] = store.claim_many([(b"j" * 24, entry)], now + 1)
    assert isinstance(late, ValueError)  # born expired: refused before Redis is asked


class _Recorder:
    """A pipeline that records how many keys each script call carries."""

    def __init__(self, pipe: Any, sizes: list[int]) -> None:
        self._pipe, self._sizes = pipe, sizes

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> None:
        self._sizes.append(numkeys)
        self._pipe.evalsha(sha, numkeys, *args)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        return list(self._pipe.execute(raise_on_error=raise_on_error))


class _ClusterStandIn(RedisCluster):
    """Passes for a ``RedisCluster`` but talks to one plain Redis: enough to see the store
    choose one script call per key, since a script may only touch keys of one slot there."""

    def __init__(self, inner: Redis, sizes: list[int]) -> None:  # no cluster to discover
        self._inner, self._sizes = inner, sizes

    def get_connection_kwargs(self) -> dict[str, Any]:
        return dict(self._inner.get_connection_kwargs())

    def register_script(self, script: Any) -> Any:
        return self._inner.register_script(script)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        return _Recorder(self._inner.pipeline(transaction=False), self._sizes)

    def script_load(self, script: Any) -> Any:
        return self._inner.script_load(script)


def test_a_cluster_client_gets_one_script_call_per_key(
    redis_client: Redis, redis_prefix: str
) -> None:
    sizes: list[int] = []
    store = RedisReplayStore(_ClusterStandIn(redis_client, sizes), prefix=redis_prefix)
    guard = make_guard(store, system_clock_ms)
    claims = [c for c in guard.claim(_requests(5)) if isinstance(c, Claim)]
    assert guard.complete([(c, None) for c in claims]) == [True] * 5
    assert sizes == [1] * 10
    sizes.clear()
    plain = make_guard(RedisReplayStore(_recording(redis_client, sizes), prefix=redis_prefix),
                       system_clock_ms)
    plain.claim(_requests(5))
    assert sizes == [5]


def _recording(client: Redis, sizes: list[int]) -> Redis:
    class Recording(Redis):
        def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
            return _Recorder(super().pipeline(transaction, shard_hint), sizes)

    return Recording(connection_pool=client.connection_pool)


def test_memory_per_key_within_budget(redis_client: Redis) -> None:
    store = RedisReplayStore(redis_client)  # the default prefix, as deployed
    guard = make_guard(store, system_clock_ms)
    stamp = system_clock_ms()
    busy = claim_one(guard, os.urandom(16), os.urandom(32), stamp, sender="af1.example.com")
    done = claim_one(guard, os.urandom(16), os.urandom(32), stamp, sender="af1.example.com")
    complete_one(guard, done)
    try:
        for claim in (busy, done):
            usage = redis_client.memory_usage(store.redis_key(claim.key))
            assert usage is not None and usage <= 256
    finally:
        redis_client.delete(store.redis_key(busy.key), store.redis_key(done.key))


def test_unreachable_redis_is_a_store_error(redis_client: Redis) -> None:
    # ``redis_client`` only for the skip-or-fail rule. No client-side retries: the point is
    # what the store makes of the final failure, and that it does not hang.
    client = Redis(host="127.0.0.1", port=_free_port(), socket_connect_timeout=0.5,
                   socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    store = RedisReplayStore(client, owns_client=True)
    guard = make_guard(store, system_clock_ms)
    claim = Claim(ClaimOutcome.PROCESS, "af1", b"m" * 16, b"k" * 24, token=b"T" * 8)
    calls: Sequence[Any] = (
        lambda: guard.claim(_requests(1)),
        lambda: guard.claim(_requests(3)),
        lambda: guard.complete([(claim, None)]),
        lambda: guard.release([claim]),
    )
    try:
        for call in calls:
            with pytest.raises(ReplayStoreError) as info:
                call()
            assert info.value.code == "replay_store_unavailable"
    finally:
        store.close()


def test_text_mode_client_refused() -> None:
    client = Redis(decode_responses=True)
    try:
        with pytest.raises(ValueError):
            RedisReplayStore(client)
    finally:
        client.close()


def test_close_leaves_a_borrowed_client_usable(redis_client: Redis, redis_prefix: str) -> None:
    RedisReplayStore(redis_client, prefix=redis_prefix).close()
    assert redis_client.ping()
