"""One network worker assembled from its parts: context store, AAnF, NEF, secure party, service.

``python -m network_side`` builds its worker here, and so do the integration tests and the
reliability harness, so what they exercise is the wiring that runs in production rather than a
copy of it that could drift (an audit log left out, no purge of expired contexts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from broker_adapter.clock import system_clock_ms
from broker_adapter.runtime import SecureParty, SecuritySettings, open_secure_party
from broker_adapter.transport import BrokerSettings
from network_side.aanf import Aanf, AanfConfig
from network_side.af_registry import AfRegistry
from network_side.audit import AuditLog
from network_side.context_store import SqliteContextStore
from network_side.nef import Nef
from network_side.service import NetworkService

log = logging.getLogger("network_side.node")

# Expired contexts are dead weight and, worse, key material kept longer than needed; a minute's
# delay is well inside any context lifetime (hours).
PURGE_INTERVAL_S = 60.0

ServiceFactory = Callable[[SecureParty, Nef, int], NetworkService]
NefFactory = Callable[[AfRegistry, Aanf, Callable[[], int], AuditLog], Nef]


def _default_service(party: SecureParty, nef: Nef, prefetch: int) -> NetworkService:
    return NetworkService(party, nef, prefetch=prefetch)


def _default_nef(
    registry: AfRegistry, aanf: Aanf, clock: Callable[[], int], audit: AuditLog
) -> Nef:
    return Nef(registry, aanf, clock, audit=audit)


@dataclass
class NetworkNode:
    party: SecureParty
    service: NetworkService
    aanf: Aanf
    store: SqliteContextStore
    _purger: asyncio.Task[None] | None = field(default=None, repr=False)

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Stop taking requests (finishing those in hand), then close the broker link and store."""
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        try:
            await self.service.stop(drain_timeout_s=drain_timeout_s)
        finally:
            await self.party.close()
            self.store.close()


async def start_network_node(
    broker: BrokerSettings,
    security: SecuritySettings,
    *,
    store: SqliteContextStore,
    registry: AfRegistry,
    clock: Callable[[], int] = system_clock_ms,
    aanf_config: AanfConfig | None = None,
    prefetch: int = 64,
    purge_interval_s: float | None = PURGE_INTERVAL_S,
    service_factory: ServiceFactory = _default_service,
    nef_factory: NefFactory = _default_nef,
) -> NetworkNode:
    """Open the network's broker party over ``store`` and start consuming requests.

    The node owns ``store`` from here on: ``close`` closes it, and so does a failed start.
    ``purge_interval_s=None`` leaves expired contexts to the caller (tests that drive a clock).
    The factories let a harness observe the real service and NEF (subclasses), nothing else.
    """
    try:
        audit = AuditLog(clock)
        aanf = Aanf(store, clock, aanf_config or AanfConfig(), audit=audit)
        nef = nef_factory(registry, aanf, clock, audit)
        party = await open_secure_party(broker, security)
    except BaseException:
        store.close()
        raise
    try:
        service = service_factory(party, nef, prefetch)
        await service.start()
    except BaseException:
        await party.close()
        store.close()
        raise
    purger = (asyncio.create_task(_purge_loop(aanf, purge_interval_s))
              if purge_interval_s is not None else None)
    return NetworkNode(party, service, aanf, store, purger)


async def _purge_loop(aanf: Aanf, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            # In a thread: one DELETE over every expired context, and with a second worker on
            # the same file it may wait up to the busy timeout for the write lock; neither may
            # hold up the requests on the event loop.
            await asyncio.to_thread(aanf.purge_expired)
        except Exception:  # a failed purge is retried next time, never fatal
            log.exception("purging expired contexts failed")
