"""``python -m network_side``: the AAnF/NEF worker (long-lived; SIGTERM drains and exits)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from broker_adapter.runtime import open_secure_party, system_clock_ms
from broker_adapter.worker import configure_logging, run_until_signalled, run_worker, start_metrics
from network_side.aanf import Aanf, AanfConfig
from network_side.af_registry import AfRegistry
from network_side.audit import AuditLog
from network_side.context_store import SqliteContextStore
from network_side.nef import Nef
from network_side.service import NetworkService
from network_side.settings import NetworkSettings, read_master_key


async def _start(settings: NetworkSettings) -> Callable[[], Awaitable[None]]:
    settings.context_db.parent.mkdir(parents=True, exist_ok=True)
    store = SqliteContextStore(settings.context_db, master_key=read_master_key(settings.master_key_file))
    audit = AuditLog(system_clock_ms)
    aanf = Aanf(
        store,
        system_clock_ms,
        AanfConfig(
            context_lifetime_ms=settings.context_lifetime_ms,
            k_af_lifetime_ms=settings.k_af_lifetime_ms,
        ),
        audit=audit,
    )
    nef = Nef(AfRegistry.load(settings.af_registry), aanf, system_clock_ms, audit=audit)
    party = await open_secure_party(settings.broker, settings.security)
    service = NetworkService(party, nef, prefetch=settings.prefetch)
    await service.start()

    async def purge_loop() -> None:
        # Expired contexts are dead weight and, worse, key material kept longer than needed.
        while True:
            await asyncio.sleep(60)
            aanf.purge_expired()

    purger = asyncio.create_task(purge_loop())

    async def stop() -> None:
        purger.cancel()
        await service.stop()
        await party.close()
        store.close()

    return stop


def main() -> None:
    settings = NetworkSettings()  # type: ignore[call-arg]  # filled from env and file
    configure_logging(settings.log_level)
    start_metrics(settings.metrics_port)
    run_worker(run_until_signalled(lambda: _start(settings)), settings.event_loop)


if __name__ == "__main__":
    main()
