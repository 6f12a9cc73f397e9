"""Robust TLS connection with certificate (EXTERNAL) login.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlencode

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from yarl import URL

from broker_adapter.errors import TransportError
from broker_adapter.transport.coalesce import CoalescingTLSTransportFactory, WriteStats
from broker_adapter.transport.raw_consume import RawConsumeChannel
from broker_adapter.transport.seams import check_library_seams, unbound_write_queue
from broker_adapter.transport.settings import BrokerSettings
from broker_adapter.transport.tls import client_ssl_context

log = logging.getLogger("broker_adapter.transport")


class RawConsumeRobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection whose channels take ``RawDeliveryCallback`` consumers
    (``raw_consume.py``); every other use is aio-pika's own."""

    CHANNEL_CLASS = RawConsumeChannel


class CoalescingRobustConnection(RawConsumeRobustConnection):
    """Our robust connection over our coalescing TLS transport (``coalesce.py``).

    aio-pika keeps only the keyword arguments it knows and turns the rest into URL query
    parameters, so the factory is set on the arguments it hands to aiormq for every
    (re)connection: each new socket gets a coalescing writer.
    """

    def __init__(self, url: URL, loop: Any = None, **kwargs: Any) -> None:
        super().__init__(url, loop=loop, **kwargs)
        self._factory = CoalescingTLSTransportFactory()
        self.kwargs["transport_factory"] = self._factory

    async def _on_connected(self) -> None:
        # Called for the first connection and every reconnection, before channels are restored.
        if self.transport is not None:
            unbound_write_queue(self.transport.connection.write_queue)
        await super()._on_connected()

    @property
    def write_stats(self) -> WriteStats:
        """Chunks aiormq wrote and socket writes they took, over all of this connection's
        sockets (chunks / writes = how many frames each write carried on average)."""
        return self._factory.stats


def amqp_url(settings: BrokerSettings, *, connection_name: str | None = None) -> str:
    """The ``amqps://`` URL for certificate login; it carries no secret."""
    query = {
        "auth": "external",
        "heartbeat": str(settings.heartbeat_s),
        "name": connection_name or settings.identity,
    }
    vhost = quote(settings.vhost, safe="")
    return f"amqps://{settings.host}:{settings.port}/{vhost}?{urlencode(query)}"


async def connect(
    settings: BrokerSettings,
    *,
    connection_name: str | None = None,
    coalesce_writes: bool = True,
) -> AbstractRobustConnection:
    """Open a robust connection, or raise ``TransportError`` with the broker's reason.

    ``coalesce_writes=False`` keeps aiormq's one socket write per frame: the benchmarks' stock
    baseline."""
    check_library_seams()
    ctx = client_ssl_context(settings.ca_file, settings.cert_file, settings.key_file)
    url = amqp_url(settings, connection_name=connection_name)
    connection_class = (
        CoalescingRobustConnection if coalesce_writes else RawConsumeRobustConnection
    )
    try:
        connection = await aio_pika.connect_robust(
            url,
            ssl_context=ctx,
            timeout=settings.connect_timeout_s,
            reconnect_interval=settings.reconnect_interval_s,
            connection_class=connection_class,
        )
    except Exception as exc:  # aiormq raises many unrelated types for a refused login.
        raise TransportError(f"cannot connect to {settings.host}:{settings.port}: {exc!r}") from exc
    broker = f"{settings.host}:{settings.port}"
    log.info("connected", extra={"identity": settings.identity, "broker": broker})
    return connection
