"""Secure messaging of one party: seal and publish, serve requests, send requests.

- ``SecureEndpoint``: seals to a named peer and publishes; opens a delivery (checks 1-7, with the
  broker-validated ``user_id`` bound to the sender). The receive path opens large batches on
  the party's ``EnvelopeWorker`` thread.
- ``SecureResponder``: consumes a request queue through the one receive path
  (``pipeline.SecureReceiver``) and answers each request, sealed to its authenticated sender.
- ``SecureRequester``: sends sealed requests and matches sealed answers by their signed
  correlation id; notifications on the same inbox go through the replay guard.

Exchange and queue names are the deployment's: they are given, never assumed here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import Counter

from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope import OpenedMessage
from broker_adapter.envelope_errors import EnvelopeError
from broker_adapter.errors import (
    BrokerAdapterError,
    RequestTimeoutError,
    TransportError,
    UnexpectedResponderError,
)
from broker_adapter.pipeline import Handler, SecureReceiver
from broker_adapter.replay import ReplayGuard
from broker_adapter.transport.consumer import Consumer
from broker_adapter.transport.delivery import Delivery
from broker_adapter.transport.publisher import OutgoingMessage, Publisher
from broker_adapter.turns import EnvelopeWorker
from broker_adapter.verdict import Reply

log = logging.getLogger("broker_adapter.secure")

UNMATCHED_ANSWERS = Counter(
    "akma_secure_unmatched_answers_total",
    "Verified answers that matched no waiting request (late, repeated or replayed): acked, "
    "dropped.",
    ["queue"],
)

NotificationHandler = Callable[[OpenedMessage], Awaitable[None]]

__all__ = ["Handler", "Reply", "SecureEndpoint", "SecureRequester", "SecureResponder"]


class MissingUserIdError(EnvelopeError):
    code = "missing_user_id"

    def __init__(self) -> None:
        super().__init__("delivery carries no broker-validated user_id")


class SecureEndpoint:
    """One party's sealing, opening and publishing."""

    def __init__(
        self,
        *,
        codec: EnvelopeCodec,
        guard: ReplayGuard,
        publisher: Publisher,
        worker: EnvelopeWorker | None = None,
    ) -> None:
        if publisher.identity != codec.identity.name:
            raise BrokerAdapterError(
                f"broker identity {publisher.identity!r} differs from envelope identity "
                f"{codec.identity.name!r}"
            )
        self.codec = codec
        self.guard = guard
        self.publisher = publisher
        self.worker = worker if worker is not None else EnvelopeWorker(use_thread=False)

    @property
    def identity(self) -> str:
        return self.codec.identity.name

    def open(self, delivery: Delivery) -> OpenedMessage:
        """Checks 1-7 (blocking; run it on ``worker``)."""
        if not delivery.user_id:
            raise MissingUserIdError()
        return self.codec.decode(delivery.body, broker_user_id=delivery.user_id)

    def seal_now(
        self, recipient: str, msg_type: str, body: bytes, correlation_id: bytes | None = None
    ) -> tuple[bytes, bytes]:
        """Seal to ``recipient`` (blocking; run it on ``worker``): (envelope bytes, message id)."""
        sealed = self.codec.encode(
            recipient=recipient, msg_type=msg_type, body=body, correlation_id=correlation_id
        )
        return sealed.data, sealed.msg_id

    async def seal(
        self, recipient: str, msg_type: str, body: bytes, correlation_id: bytes | None = None
    ) -> tuple[bytes, bytes]:
        return await self.worker.run(
            lambda: self.seal_now(recipient, msg_type, body, correlation_id))

    async def publish_sealed(
        self,
        exchange: str,
        routing_key: str,
        data: bytes,
        msg_id: bytes | None,
        *,
        msg_type: str,
        correlation_id: bytes | None = None,
        expiration_s: float | None = None,
    ) -> None:
        """Publish already sealed bytes. Retrying with the same bytes is what makes a resend a
        harmless duplicate for the receiver; sealing again would look like a conflict."""
        await self.publisher.publish(
            exchange,
            routing_key,
            OutgoingMessage(
                body=data,
                # AMQP properties are routing hints for operators; the signed inner message is
                # what the receiver trusts.
                message_id=msg_id.hex() if msg_id is not None else secrets.token_hex(16),
                correlation_id=correlation_id.hex() if correlation_id is not None else None,
                msg_type=msg_type,
                expiration_s=expiration_s,
            ),
        )

    async def send(
        self,
        exchange: str,
        routing_key: str,
        recipient: str,
        msg_type: str,
        body: bytes,
        *,
        correlation_id: bytes | None = None,
    ) -> bytes:
        """Seal and publish one message; returns its message id."""
        data, msg_id = await self.seal(recipient, msg_type, body, correlation_id)
        await self.publish_sealed(
            exchange, routing_key, data, msg_id, msg_type=msg_type, correlation_id=correlation_id
        )
        return msg_id


class SecureResponder:
    """Serves requests from one queue: each answered with a sealed reply to the sender's inbox,
    routed by the authenticated sender's name, never by a client-supplied ``reply_to``."""

    def __init__(
        self,
        endpoint: SecureEndpoint,
        connection: AbstractRobustConnection,
        queue: str,
        handler: Handler,
        *,
        reply_exchange: str,
        dead_letter_exchange: str,
        prefetch: int = 64,
    ) -> None:
        self.receiver = SecureReceiver(endpoint, handler, reply_exchange=reply_exchange)
        self._consumer = Consumer(
            connection, queue, self.receiver, publisher=endpoint.publisher,
            dead_letter_exchange=dead_letter_exchange, prefetch=prefetch,
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        await self._consumer.stop(drain_timeout_s=drain_timeout_s)


@dataclass
class _Pending:
    future: asyncio.Future[OpenedMessage]
    peer: str


class SecureRequester:
    """Sends sealed requests and matches sealed answers by their *signed* correlation id.

    Answers are deduplicated by the table of waiting requests, not by the replay store: an
    answer is accepted only while its request (a random 128-bit id named in the signed
    correlation id) waits, and only once. Notifications go through the replay store. Retries
    resend the same sealed bytes, so the responder answers them from its cache.
    """

    def __init__(
        self,
        endpoint: SecureEndpoint,
        connection: AbstractRobustConnection,
        inbox_queue: str,
        *,
        request_exchange: str,
        dead_letter_exchange: str,
        on_notification: NotificationHandler | None = None,
        prefetch: int = 128,
    ) -> None:
        self._endpoint = endpoint
        self._request_exchange = request_exchange
        self._on_notification = on_notification
        self._inbox_queue = inbox_queue
        self._pending: dict[bytes, _Pending] = {}
        receiver = SecureReceiver(endpoint, self._on_inbox, needs_claim=_is_notification)
        self._consumer = Consumer(
            connection, inbox_queue, receiver, publisher=endpoint.publisher,
            dead_letter_exchange=dead_letter_exchange, prefetch=prefetch,
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        await self._consumer.stop(drain_timeout_s=drain_timeout_s)
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.cancel()

    async def _on_inbox(self, opened: OpenedMessage) -> None:
        if opened.correlation_id is None:
            if self._on_notification is not None:
                await self._on_notification(opened)
            return
        pending = self._pending.get(opened.correlation_id)
        if pending is None or pending.future.done():
            UNMATCHED_ANSWERS.labels(queue=self._inbox_queue).inc()
            log.info("late or repeated answer dropped",
                     extra={"correlation_id": opened.correlation_id.hex(),
                            "sender": opened.sender, "msg_id": opened.msg_id.hex()})
            return
        if opened.sender != pending.peer:
            raise UnexpectedResponderError(f"answer from {opened.sender}")
        pending.future.set_result(opened)

    async def request(
        self,
        peer: str,
        routing_key: str,
        msg_type: str,
        body: bytes,
        *,
        timeout_s: float = 5.0,
        attempts: int = 3,
    ) -> OpenedMessage:
        """Send one request and return the verified answer, resending on timeout."""
        data, msg_id = await self._endpoint.seal(peer, msg_type, body)
        future: asyncio.Future[OpenedMessage] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = _Pending(future, peer)
        try:
            for attempt in range(1, attempts + 1):
                try:
                    await self._endpoint.publish_sealed(
                        self._request_exchange, routing_key, data, msg_id,
                        msg_type=msg_type, expiration_s=timeout_s * attempts,
                    )
                except TransportError:
                    if attempt == attempts:
                        raise
                    await asyncio.sleep(min(0.2 * attempt, 1.0))
                    continue
                try:
                    return await asyncio.wait_for(asyncio.shield(future), timeout=timeout_s)
                except TimeoutError:
                    log.warning("request %s timed out (attempt %d)", msg_id.hex(), attempt)
            raise RequestTimeoutError(f"no answer to {msg_type} after {attempts} attempts")
        finally:
            self._pending.pop(msg_id, None)


def _is_notification(opened: OpenedMessage) -> bool:
    return opened.correlation_id is None
