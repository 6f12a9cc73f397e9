"""Assemble one party's secure messaging from configuration: keys, trust, replay store, broker.

This is the single place where files, Redis and the broker connection are opened for a party,
so workers, the demo and the tests build parties the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aio_pika.abc import AbstractRobustConnection
from pydantic import BaseModel, ConfigDict, Field

from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope import DEFAULT_SKEW_MS, DEFAULT_WINDOW_MS, EnvelopePolicy
from broker_adapter.errors import BrokerConfigError
from broker_adapter.identity import load_local_identity
from broker_adapter.replay import ReplayGuard, ReplayStore, ReplayStoreError
from broker_adapter.replay_stores.memory import MemoryReplayStore
from broker_adapter.replay_stores.sqlite import SqliteReplayStore
from broker_adapter.secure import SecureEndpoint
from broker_adapter.suites import DEFAULT_SUITE_NAME
from broker_adapter.transport import BrokerSettings, Publisher, connect
from broker_adapter.trust import TrustStore

log = logging.getLogger("broker_adapter.runtime")


def system_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SecuritySettings(BaseModel):
    """Message-layer settings of one party (nested in each worker's settings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Directory with this party's sign.* and enc*.{crt,key} (docs/architecture.md).
    key_dir: Path
    # Directory with the deployment CA, its CRL and the peers' message certificates.
    trust_dir: Path
    suite: str = DEFAULT_SUITE_NAME
    allowed_suites: tuple[str, ...] = (DEFAULT_SUITE_NAME,)
    window_ms: int = Field(default=DEFAULT_WINDOW_MS, gt=0)
    skew_ms: int = Field(default=DEFAULT_SKEW_MS, ge=0)
    max_envelope_bytes: int = Field(default=64 * 1024, gt=0)
    replay_store: Literal["sqlite", "redis", "memory"] = "sqlite"
    replay_sqlite_path: Path = Path("var/replay.sqlite3")
    replay_redis_url: str | None = None
    replay_redis_prefix: str = "akma:replay:"
    # A batch's claims and completions as one script call over all its keys (faster); turn it
    # off behind a proxy or cluster that only routes one-key scripts.
    replay_redis_batch_scripts: bool = True
    # A handler holding a message longer than this is presumed dead and the message reprocessed.
    # Keep it within one lease wait of the consumer (5 s in broker_adapter.secure) and well
    # under a requester's patience (AF: 3 x 5 s): after a worker crash, the redelivery then
    # reclaims the message at its first wait. With 30 s, a crashed worker's in-flight requests
    # stalled past the AF's timeout and spent the queue's delivery limit on lease waits
    # (found by the worker_crash scenario, docs/reliability.md).
    replay_lease_ms: int = Field(default=5_000, gt=0)
    # Trust material (CA, CRL, peer certificates) is re-read this often without a restart.
    trust_reload_s: float = Field(default=60.0, gt=0)
    # Open envelopes (checks 1-7) on one worker thread instead of the event loop, a loop turn's
    # deliveries as one batch (ECDSA verification and AES-GCM release the GIL), so the loop
    # moves frames and replay claims meanwhile. Only batches of at least
    # ``open_thread_min_batch`` deliveries go to the thread: a lone request is opened on the
    # loop, where it waits for no hand-off (that cost +0.4 ms per K_AF request at low load when
    # every batch went to the thread). Measured in docs/benchmarks.md.
    open_in_thread: bool = True
    open_thread_min_batch: int = Field(default=4, ge=1)
    # A loop turn's batch goes to the thread in slices of at most this many, so the loop claims
    # and acks the first slice while the thread opens the next. Unsliced, a consumer whose
    # whole prefetch window arrived at once waited for all of it, then the thread waited for
    # the loop: the two took turns instead of overlapping (docs/benchmarks.md, item 12).
    open_thread_max_batch: int = Field(default=64, ge=1)
    # A batch opened on the envelope thread is claimed in the replay store there too, in the
    # same hand-off (SQLite; Redis with a blocking client of its own, made below): the loop then
    # runs none of the claim statements (docs/benchmarks.md, item 17).
    claim_in_thread: bool = True


@dataclass
class SecureParty:
    """Everything one party needs at run time; ``close`` releases all of it."""

    connection: AbstractRobustConnection
    publisher: Publisher
    endpoint: SecureEndpoint
    trust: TrustStore
    store: ReplayStore
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _executor: ThreadPoolExecutor | None = None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.publisher.close()
        await self.connection.close()
        await self.store.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)


# The blocking Redis client's socket timeouts (claims on the envelope thread).
_REDIS_THREAD_TIMEOUT_S = 2.0
# How long a worker keeps trying to open an SQLite replay file that another process is writing.
_SQLITE_OPEN_WAIT_S = 10.0


async def _open_store(settings: SecuritySettings) -> ReplayStore:
    if settings.replay_store == "memory":
        # Only for tests and throwaway demos: it forgets everything on restart.
        return MemoryReplayStore()
    if settings.replay_store == "redis":
        if not settings.replay_redis_url:
            raise BrokerConfigError("replay_store=redis needs replay_redis_url")
        from redis import Redis as SyncRedis
        from redis.asyncio import Redis

        from broker_adapter.replay_stores.redis import RedisReplayStore

        client = Redis.from_url(settings.replay_redis_url, decode_responses=False)
        # A blocking client too, for claims made on the envelope thread; its timeout bounds
        # how long a dead server can hold that thread (and the opens queued behind it).
        sync_client = (
            SyncRedis.from_url(settings.replay_redis_url, decode_responses=False,
                               socket_timeout=_REDIS_THREAD_TIMEOUT_S,
                               socket_connect_timeout=_REDIS_THREAD_TIMEOUT_S)
            if settings.open_in_thread and settings.claim_in_thread else None
        )
        return RedisReplayStore(client, prefix=settings.replay_redis_prefix, owns_client=True,
                                sync_client=sync_client,
                                batch_scripts=settings.replay_redis_batch_scripts)
    settings.replay_sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    # Opening the file takes its write lock for a moment (WAL switch, schema). The store waits
    # for a busy file up to its busy timeout itself; a lock held longer than that (a stuck
    # process sharing the file) is retried here a little longer before the worker gives up
    # (the worker_crash scenario found workers dying of "database is locked" at start).
    deadline = time.monotonic() + _SQLITE_OPEN_WAIT_S
    while True:
        try:
            return SqliteReplayStore(settings.replay_sqlite_path)
        except ReplayStoreError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _reload_trust_periodically(trust: TrustStore, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            # A bad file on disk keeps the old snapshot in force; we only log it.
            trust.reload()
        except Exception:
            log.warning("trust reload failed; keeping the previous trust material", exc_info=True)


async def open_secure_party(
    broker: BrokerSettings,
    security: SecuritySettings,
    *,
    clock_ms: Callable[[], int] | None = None,
) -> SecureParty:
    """Load keys and trust, open the replay store and the broker connection."""
    clock = clock_ms or system_clock_ms
    identity = load_local_identity(security.key_dir, broker.identity)
    trust = TrustStore.from_directory(security.trust_dir)
    policy = EnvelopePolicy(
        allowed_suites=frozenset(security.allowed_suites),
        max_envelope_bytes=security.max_envelope_bytes,
        window_ms=security.window_ms,
        skew_ms=security.skew_ms,
    )
    codec = EnvelopeCodec(
        identity=identity,
        trust=trust,
        policy=policy,
        clock=clock,
        rng=os.urandom,
        suite=security.suite,
    )
    store = await _open_store(security)
    guard = ReplayGuard(
        store,
        window_ms=security.window_ms,
        skew_ms=security.skew_ms,
        in_progress_lease_ms=security.replay_lease_ms,
        clock=clock,
    )
    connection = await connect(broker)
    publisher = Publisher(connection, broker.identity, confirm_timeout_s=broker.publish_timeout_s)
    executor = (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="envelope-open")
        if security.open_in_thread
        else None
    )
    endpoint = SecureEndpoint(
        codec=codec, guard=guard, publisher=publisher, open_executor=executor,
        open_executor_min_batch=security.open_thread_min_batch,
        open_executor_max_batch=security.open_thread_max_batch,
        claim_on_open_thread=security.claim_in_thread,
    )
    party = SecureParty(connection, publisher, endpoint, trust, store, _executor=executor)
    party._tasks.append(
        asyncio.create_task(_reload_trust_periodically(trust, security.trust_reload_s))
    )
    return party
