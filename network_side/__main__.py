"""``python -m network_side``: the AAnF/NEF worker (long-lived; SIGTERM drains and exits)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from broker_adapter.worker import configure_logging, run_until_signalled, run_worker, start_metrics
from network_side.aanf import AanfConfig
from network_side.af_registry import AfRegistry
from network_side.context_store import SqliteContextStore
from network_side.node import start_network_node
from network_side.settings import NetworkSettings, read_master_key


async def _start(settings: NetworkSettings) -> Callable[[], Awaitable[None]]:
    settings.context_db.parent.mkdir(parents=True, exist_ok=True)
    registry = AfRegistry.load(settings.af_registry)
    master_key = read_master_key(settings.master_key_file)
    store = SqliteContextStore(settings.context_db, master_key=master_key)
    node = await start_network_node(
        settings.broker,
        settings.security,
        store=store,
        registry=registry,
        aanf_config=AanfConfig(
            context_lifetime_ms=settings.context_lifetime_ms,
            k_af_lifetime_ms=settings.k_af_lifetime_ms,
        ),
        prefetch=settings.prefetch,
    )
    return node.close


def main() -> None:
    settings = NetworkSettings()  # type: ignore[call-arg]  # filled from env and file
    configure_logging(settings.log_level)
    start_metrics(settings.metrics_port)
    run_worker(run_until_signalled(lambda: _start(settings)), settings.event_loop)


if __name__ == "__main__":
    main()
