"""Publishing with publisher confirms, mandatory routing and a validated ``user_id``.

Every outcome other than a positive confirm is an error for the caller: a nack, a returned
(unroutable) message, or a missing confirm. Connection-level failures are retried on the robust
connection's next channel a bounded number of times; this can duplicate a message whose confirm
was lost, which the consumers' replay guard turns into a harmless redelivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from broker_adapter.errors import (
    PublishNackedError,
    PublishReturnedError,
    PublishTimeoutError,
    TransportError,
)
from broker_adapter.transport import metrics

log = logging.getLogger("broker_adapter.transport")

# Errors that mean "the channel or connection went away", as opposed to a broker verdict on
# this particular message. Only these are worth retrying.
_LINK_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
    RuntimeError,  # aiormq raises RuntimeError("... closed") for a writer that went away.
)


@dataclass(frozen=True)
class OutgoingMessage:
    """What a caller publishes; the transport adds ``user_id`` and persistence."""

    body: bytes
    message_id: str
    correlation_id: str | None = None
    msg_type: str | None = None
    reply_to: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    # Seconds; a request that nobody answers in time is useless afterwards.
    expiration_s: float | None = None


class Publisher:
    """One confirmed channel of one party.

    ``user_id`` is always our own identity: RabbitMQ checks it against the certificate login and
    closes the channel on a mismatch, which lets consumers trust it as the authenticated sender.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        identity: str,
        *,
        confirm_timeout_s: float = 10.0,
        link_retries: int = 3,
        retry_wait_s: float = 15.0,
    ) -> None:
        self._connection = connection
        self._identity = identity
        self._confirm_timeout_s = confirm_timeout_s
        self._link_retries = link_retries
        self._retry_wait_s = retry_wait_s
        self._channel: AbstractChannel | None = None
        # One opening at a time, awaited by every publisher that needs the channel. Not a lock:
        # an asyncio.Lock wakes one waiter per loop turn, so 300 publishes that arrived while
        # the channel opened would leave one per turn, each with a socket write of its own.
        self._opening: asyncio.Future[AbstractChannel] | None = None
        # Labelled "confirmed" counters per exchange, looked up once (the hot path).
        self._m_confirmed: dict[str, Any] = {}

    @property
    def identity(self) -> str:
        return self._identity

    async def _ensure_channel(self) -> AbstractChannel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open_channel())
            # Retrieved here too, for the case that every waiter has given up.
            self._opening.add_done_callback(lambda f: f.cancelled() or f.exception())
        # Shielded: a caller that gives up does not cancel the opening the others wait for.
        return await asyncio.shield(self._opening)

    async def _open_channel(self) -> AbstractChannel:
        try:
            # A closed channel (for example after the broker refused something) is replaced
            # by a fresh one; the robust connection waits for the link itself.
            channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._channel = channel
            return channel
        finally:
            self._opening = None

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        message: OutgoingMessage,
        *,
        mandatory: bool = True,
    ) -> None:
        """Publish and wait for the broker's confirm; raise a coded ``TransportError`` otherwise."""
        amqp_message = aio_pika.Message(
            body=message.body,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            type=message.msg_type,
            reply_to=message.reply_to,
            headers=dict(message.headers),
            user_id=self._identity,
            app_id="akma-secure-broker",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            expiration=message.expiration_s,
            timestamp=time.time(),
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                channel = await self._ensure_channel()
                # aiormq directly (what aio-pika's Exchange.publish calls) for ``wait=False``:
                # with the default, aiormq holds the channel lock until the frame has been
                # written, so a channel has one publish on its way at a time and frames can
                # never share a socket write (transport/coalesce.py). Exchanges come from the
                # broker definitions and are named, never declared (no configure permission).
                # The abstract type lacks ``wait``; aio-pika's channels are aiormq Channels.
                underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
                await underlay.basic_publish(
                    amqp_message.body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=amqp_message.properties,
                    mandatory=mandatory,
                    timeout=self._confirm_timeout_s,
                    wait=False,
                )
                confirmed = self._m_confirmed.get(exchange)
                if confirmed is None:
                    confirmed = metrics.PUBLISHED.labels(exchange=exchange, outcome="confirmed")
                    self._m_confirmed[exchange] = confirmed
                confirmed.inc()
                return
            except aiormq.exceptions.PublishError as exc:
                metrics.PUBLISHED.labels(exchange=exchange, outcome="returned").inc()
                raise PublishReturnedError(
                    f"unroutable: exchange={exchange} key={routing_key}"
                ) from exc
            except aiormq.exceptions.DeliveryError as exc:
                metrics.PUBLISHED.labels(exchange=exchange, outcome="nacked").inc()
                # Start the next publish on a fresh channel. On RabbitMQ 3.10, after the node
                # leading a quorum queue was killed, a channel kept nacking every publish to
                # that queue (for over a minute) while new channels published fine (found by
                # the cluster scenario, docs/reliability.md).
                self._discard_channel()
                raise PublishNackedError(f"exchange={exchange} key={routing_key}") from exc
            except TimeoutError as exc:
                metrics.PUBLISHED.labels(exchange=exchange, outcome="timeout").inc()
                raise PublishTimeoutError(f"no confirm in {self._confirm_timeout_s}s") from exc
            except aiormq.exceptions.ChannelClosed as exc:
                # The broker closed the channel because of this message (for example a forged
                # user_id or a missing write permission): a verdict, not a link failure.
                self._channel = None
                metrics.PUBLISHED.labels(exchange=exchange, outcome="refused").inc()
                raise TransportError(f"broker refused publish: {exc}") from exc
            except _LINK_ERRORS as exc:
                if attempt > self._link_retries:
                    metrics.PUBLISHED.labels(exchange=exchange, outcome="link_failed").inc()
                    raise TransportError(f"link down after {attempt} attempts: {exc!r}") from exc
                metrics.PUBLISHED.labels(exchange=exchange, outcome="retried").inc()
                log.warning("publish retry %d after link error: %r", attempt, exc)
                self._channel = None
                await self._wait_for_link()

    def _discard_channel(self) -> None:
        """Forget the current channel and close it in the background (the broker would keep an
        abandoned channel open until the connection ends)."""
        stale, self._channel = self._channel, None
        if stale is not None and not stale.is_closed:
            task = asyncio.ensure_future(stale.close())
            # Closing a channel of a failing link may itself fail; nothing depends on it.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _wait_for_link(self) -> None:
        """Wait until the robust connection is back (bounded), then let the caller retry."""
        deadline = asyncio.get_running_loop().time() + self._retry_wait_s
        while asyncio.get_running_loop().time() < deadline:
            if not self._connection.is_closed:
                try:
                    await asyncio.wait_for(self._connection.ready(), timeout=1.0)
                    return
                except Exception:
                    log.debug("link not ready yet", exc_info=True)
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._channel = None
