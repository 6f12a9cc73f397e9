"""Assemble one party's secure messaging from configuration: keys, trust, replay store, broker.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aio_pika.abc import AbstractRobustConnection
from pydantic import BaseModel, ConfigDict, Field

from broker_adapter.clock import system_clock_ms
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
from broker_adapter.turns import EnvelopeWorker

log = logging.getLogger("broker_adapter.runtime")


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
    # Keep it within one lease wait of the receiver (5 s) and well under a requester's
    # patience, so that after a worker crash the redelivery reclaims the message at its first
    # wait instead of spending the queue's delivery limit.
    replay_lease_ms: int = Field(default=5_000, gt=0)
    # Trust material (CA, CRL, peer certificates) is re-read this often without a restart.
    trust_reload_s: float = Field(default=60.0, gt=0)
    # Open, verify and claim large batches on a thread of their own, so the event loop keeps
    # moving frames meanwhile; turn it off on a host with a single core, where it cannot help.
    envelope_thread: bool = True


@dataclass
class SecureParty:
    """Everything one party needs at run time; ``close`` releases all of it."""

    connection: AbstractRobustConnection
    publisher: Publisher
    endpoint: SecureEndpoint
    trust: TrustStore
    store: ReplayStore
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.publisher.close()
        await self.connection.close()
        self.endpoint.worker.close()
        self.store.close()


# The Redis client's socket timeouts: they bound how long a dead server holds a store call.
_REDIS_TIMEOUT_S = 2.0
# How often the SQLite replay store's WAL is checkpointed.
_CHECKPOINT_EVERY_S = 1.0
# How long a worker keeps trying to open an SQLite replay file that another process is writing.
_SQLITE_OPEN_WAIT_S = 10.0


async def _open_store(settings: SecuritySettings) -> ReplayStore:
    if settings.replay_store == "memory":
        # Only for tests and throwaway demos: it forgets everything on restart.
        return MemoryReplayStore()
    if settings.replay_store == "redis":
        if not settings.replay_redis_url:
            raise BrokerConfigError("replay_store=redis needs replay_redis_url")
        # Imported only here: parties on the other stores never load the Redis client.
        from redis import Redis  # noqa: PLC0415

        from broker_adapter.replay_stores.redis import RedisReplayStore  # noqa: PLC0415

        client = Redis.from_url(settings.replay_redis_url, decode_responses=False,
                                socket_timeout=_REDIS_TIMEOUT_S,
                                socket_connect_timeout=_REDIS_TIMEOUT_S)
        return RedisReplayStore(client, prefix=settings.replay_redis_prefix, owns_client=True,
                                batch_scripts=settings.replay_redis_batch_scripts)
    settings.replay_sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    # Opening takes the file's write lock for a moment (WAL switch, schema); a process sharing
    # the file may hold it longer than the store's busy timeout, so opening is retried a while.
    deadline = time.monotonic() + _SQLITE_OPEN_WAIT_S
    while True:
        try:
            return SqliteReplayStore(settings.replay_sqlite_path)
        except ReplayStoreError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _periodically(every_s: float, work: Callable[[], None], failed: str) -> None:
    """``work`` every ``every_s`` on a thread of its own (file reads, an fsync: never on the
    event loop); a failure is logged and the next round tries again."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(work)
        except Exception:
            log.warning(failed, exc_info=True)


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
    try:
        connection = await connect(broker)
    except BaseException:
        store.close()
        raise
    publisher = Publisher(connection, broker.identity, confirm_timeout_s=broker.publish_timeout_s)
    endpoint = SecureEndpoint(
        codec=codec, guard=guard, publisher=publisher,
        worker=EnvelopeWorker(use_thread=security.envelope_thread),
    )
    party = SecureParty(connection, publisher, endpoint, trust, store)
    party._tasks.append(
        # A bad file on disk keeps the previous snapshot in force.
        asyncio.create_task(_periodically(
            security.trust_reload_s, trust.reload,
            "trust reload failed; keeping the previous trust material"))
    )
    if isinstance(store, SqliteReplayStore):
        party._tasks.append(asyncio.create_task(
            # A passive checkpoint from its own connection does not block claims.
            _periodically(_CHECKPOINT_EVERY_S, store.checkpoint,
                          "replay store checkpoint failed; retried later")))
    return party
