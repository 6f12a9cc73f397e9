"""``python -m as_side``: an AF worker (long-lived; SIGTERM drains and exits)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from akma_contract.identifiers import make_af_id
from as_side.service import AfService
from as_side.settings import AfSettings
from broker_adapter.runtime import open_secure_party
from broker_adapter.worker import configure_logging, run_until_signalled, run_worker, start_metrics


async def _start(settings: AfSettings) -> Callable[[], Awaitable[None]]:
    af_id = make_af_id(settings.af_fqdn, bytes.fromhex(settings.ua_protocol_id))
    party = await open_secure_party(settings.broker, settings.security)
    service = AfService.build(
        party,
        af_id=af_id,
        network=settings.network,
        timeout_s=settings.request_timeout_s,
        attempts=settings.request_attempts,
        ua_port=settings.ua_port,
        reveal_keys=settings.demo_reveal_keys,
    )
    await service.start()

    async def stop() -> None:
        await service.stop()
        await party.close()

    return stop


def main() -> None:
    settings = AfSettings()  # type: ignore[call-arg]  # filled from env and file
    configure_logging(settings.log_level)
    start_metrics(settings.metrics_port)
    run_worker(run_until_signalled(lambda: _start(settings)), settings.event_loop)


if __name__ == "__main__":
    main()
