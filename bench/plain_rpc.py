"""The plain request/response client the benchmarks compare against: no envelope, no replay guard.

The requester publishes to the responder's request exchange and consumes its own inbox queue.
Responses are matched by correlation id; anything else arriving in the inbox (late answers,
notifications) goes to ``on_unsolicited``. The responder addresses a response by the requester's
*validated* ``user_id``, never by a client-supplied ``reply_to``, so one party cannot divert
another's answers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence

from aio_pika.abc import AbstractRobustConnection

from broker_adapter.errors import RequestTimeoutError
from broker_adapter.transport.consumer import BatchHandler, Consumer
from broker_adapter.transport.delivery import Delivery
from broker_adapter.transport.publisher import OutgoingMessage, Publisher
from broker_adapter.verdict import Ack, Outcome, outcome_for

log = logging.getLogger("bench.plain_rpc")

UnsolicitedHandler = Callable[[Delivery], Awaitable[Outcome]]


def each(handler: Callable[[Delivery], Awaitable[Outcome]]) -> BatchHandler:
    """A consumer's batch handler running a plain per-delivery ``handler`` on each delivery;
    whatever it raises is that delivery's outcome, mapped as the secure receive path maps it."""

    async def batch(deliveries: Sequence[Delivery]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for delivery in deliveries:
            try:
                outcomes.append(await handler(delivery))
            except Exception as exc:  # noqa: BLE001 - that delivery's outcome
                outcomes.append(outcome_for(exc))
        return outcomes

    return batch


async def _ack_unsolicited(delivery: Delivery) -> Outcome:
    log.info("unsolicited delivery dropped", extra={"correlation_id": delivery.correlation_id})
    return Ack()


class RpcClient:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        publisher: Publisher,
        inbox_queue: str,
        *,
        on_unsolicited: UnsolicitedHandler = _ack_unsolicited,
        dead_letter_exchange: str = "akma.dlx",
        prefetch: int = 128,
    ) -> None:
        self._publisher = publisher
        self._pending: dict[str, asyncio.Future[Delivery]] = {}
        self._on_unsolicited = on_unsolicited
        self._consumer = Consumer(
            connection, inbox_queue, each(self._on_inbox), publisher=publisher,
            dead_letter_exchange=dead_letter_exchange, prefetch=prefetch,
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def _on_inbox(self, delivery: Delivery) -> Outcome:
        future = (
            self._pending.get(delivery.correlation_id) if delivery.correlation_id else None
        )
        if future is None or future.done():
            return await self._on_unsolicited(delivery)
        future.set_result(delivery)
        return Ack()

    async def request(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        timeout_s: float,
        msg_type: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Delivery:
        """Publish a request and wait for the delivery that answers it.

        ``correlation_id`` defaults to the message id. A timeout raises ``RequestTimeoutError``;
        the request may still be processed later, so callers retry with the same message only
        when the responder deduplicates (ours do).
        """
        message_id = message_id or secrets.token_hex(16)
        key = correlation_id or message_id
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            await self._publisher.publish(
                exchange,
                routing_key,
                OutgoingMessage(
                    body=body,
                    message_id=message_id,
                    correlation_id=key,
                    msg_type=msg_type,
                    # An unanswered request is worthless after the caller gave up.
                    expiration_s=max(timeout_s, 1.0),
                ),
            )
            try:
                return await asyncio.wait_for(future, timeout=timeout_s)
            except TimeoutError as exc:
                raise RequestTimeoutError(f"no response to {key} in {timeout_s}s") from exc
        finally:
            self._pending.pop(key, None)

    async def stop(self) -> None:
        await self._consumer.stop()
        for future in self._pending.values():
            if not future.done():
                future.cancel()
