"""Robust TLS connection with certificate (EXTERNAL) login.

Reconnection lives only here, in aio-pika's robust connection: everything else assumes a
connection and lets it restore channels and consumers after a broker restart or a cut link.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, urlencode

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from broker_adapter.errors import TransportError
from broker_adapter.transport.settings import BrokerSettings
from broker_adapter.transport.tls import client_ssl_context

log = logging.getLogger("broker_adapter.transport")


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
    settings: BrokerSettings, *, connection_name: str | None = None
) -> AbstractRobustConnection:
    """Open a robust connection, or raise ``TransportError`` with the broker's reason."""
    ctx = client_ssl_context(settings.ca_file, settings.cert_file, settings.key_file)
    url = amqp_url(settings, connection_name=connection_name)
    try:
        connection = await aio_pika.connect_robust(
            url,
            ssl_context=ctx,
            timeout=settings.connect_timeout_s,
            reconnect_interval=settings.reconnect_interval_s,
        )
    except Exception as exc:  # aiormq raises many unrelated types for a refused login.
        raise TransportError(f"cannot connect to {settings.host}:{settings.port}: {exc!r}") from exc
    log.info(
        "connected", extra={"identity": settings.identity, "broker": f"{settings.host}:{settings.port}"}
    )
    return connection
