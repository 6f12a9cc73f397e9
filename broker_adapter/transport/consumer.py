"""Consuming with prefetch and manual acks tied to each message's outcome.

A loop turn's deliveries go to the batch handler together (a lone delivery is a batch of one),
which answers one outcome per delivery:
- ``Ack``: ack, coalesced with the other acks of the same loop turn (``acks.py``);
- ``DeadLetter(code)``: republish the original body to the dead-letter exchange with the reason
  in headers (confirmed), then ack. If that republish fails, ``reject(requeue=False)`` lets the
  broker dead-letter it by policy (reason ``rejected`` in ``x-death``): never a silent drop;
- ``Requeue``: nack with requeue after a short backoff. The quorum queue's ``delivery-limit``
  policy dead-letters a message that keeps failing, so a poison message cannot loop forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from broker_adapter.errors import BrokerAdapterError, BrokerConfigError, TransportError
from broker_adapter.transport import metrics
from broker_adapter.transport.acks import AckBatcher
from broker_adapter.transport.delivery import Delivery
from broker_adapter.transport.publisher import OutgoingMessage, Publisher
from broker_adapter.transport.raw_consume import (
    RawConsumeQueue,
    RawDelivery,
    RawDeliveryCallback,
)
from broker_adapter.turns import PerTurn
from broker_adapter.verdict import Ack, DeadLetter, Outcome, Requeue

log = logging.getLogger("broker_adapter.transport")

# Many deliveries at once, one outcome for each, in order.
BatchHandler = Callable[[Sequence[Delivery]], Awaitable[list[Outcome]]]

# Header names are part of the operator interface (management UI, alerts): keep them stable.
H_REASON = "x-akma-reason"
H_DETAIL = "x-akma-detail"
H_QUEUE = "x-akma-queue"
H_CONSUMER = "x-akma-consumer"
H_REJECTED_AT = "x-akma-rejected-at"
H_ORIGINAL_USER = "x-akma-original-user-id"

_MAX_DETAIL = 200
# A loop turn's deliveries go to the handler in slices of at most this many, so that one slice
# can wait for the envelope thread while the loop settles another.
MAX_BATCH = 64
# How long ``stop`` waits for the broker to confirm a cancel or a channel close.
_CLOSE_TIMEOUT_S = 5.0


class Consumer:
    """Consumes one queue with a bounded number of deliveries in flight."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        queue_name: str,
        handler: BatchHandler,
        *,
        publisher: Publisher,
        dead_letter_exchange: str,
        prefetch: int = 64,
        requeue_backoff_s: float = 0.1,
    ) -> None:
        self._connection = connection
        self._queue_name = queue_name
        self._handler = handler
        self._dead_letter_exchange = dead_letter_exchange
        # Deliveries of the current loop turn, waiting for ``_dispatch_turn``.
        self._turn: list[RawDelivery] = []
        self._dispatch = PerTurn(self._dispatch_turn)
        self._publisher = publisher
        self._prefetch = prefetch
        self._requeue_backoff_s = requeue_backoff_s
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._acks = AckBatcher()
        # Labelled metric children looked up once: ``labels()`` hashes and locks on every call.
        self._m_in_flight = metrics.IN_FLIGHT.labels(queue=queue_name)
        self._m_handler_seconds = metrics.HANDLER_SECONDS.labels(queue=queue_name)
        self._m_acked = metrics.CONSUMED.labels(queue=queue_name, outcome="ack")

    @property
    def queue_name(self) -> str:
        return self._queue_name

    async def start(self) -> None:
        # The channel is ours alone so that its prefetch applies to this queue only. We keep a
        # strong reference: aio-pika holds channels weakly.
        self._channel = await self._connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self._prefetch)
        # A passive declare needs no configure permission and, unlike get_queue(ensure=False),
        # is restored by the robust connection after a reconnect together with the consumer.
        self._queue = await self._channel.declare_queue(self._queue_name, passive=True)
        if not isinstance(self._queue, RawConsumeQueue):
            # Deliveries come straight from aiormq, which only our connections' channels offer.
            raise BrokerConfigError(
                "a Consumer needs a connection from broker_adapter.transport.connect")
        self._consumer_tag = await self._queue.consume(
            RawDeliveryCallback(self._on_raw), no_ack=False)
        log.info("consuming", extra={"queue": self._queue_name})

    async def _on_raw(self, message: DeliveredMessage) -> None:
        raw = RawDelivery(message)
        if self._stopping:
            # Arrived after the cancel: give it back for another worker.
            await self._settle_quietly(raw, requeue=True)
            return
        self._acks.delivered(raw)
        # Collected until the loop's next turn and handled in tasks of our own: a channel's
        # closing cancels aiormq's callback task, and a handling cancelled halfway would give
        # up a replay claim whose work was done, so the redelivery would do it all again.
        self._turn.append(raw)
        self._idle.clear()  # ``stop`` must wait for these too
        self._dispatch.schedule()

    def _dispatch_turn(self) -> None:
        turn, self._turn = self._turn, []
        loop = asyncio.get_running_loop()
        for start in range(0, len(turn), MAX_BATCH):
            handling = loop.create_task(self._tracked(turn[start:start + MAX_BATCH]))
            self._in_flight.add(handling)
            handling.add_done_callback(self._handling_done)
        if not self._in_flight:
            self._idle.set()

    def _handling_done(self, handling: asyncio.Task[None]) -> None:
        self._in_flight.discard(handling)
        if not self._in_flight and not self._turn:
            self._idle.set()
        if not handling.cancelled() and handling.exception() is not None:
            log.error("handling failed", exc_info=handling.exception(),
                      extra={"queue": self._queue_name})

    async def _tracked(self, messages: list[RawDelivery]) -> None:
        count = len(messages)
        self._m_in_flight.inc(count)
        started = time.perf_counter()
        try:
            await self._handle(messages)
        finally:
            elapsed = time.perf_counter() - started
            for _ in range(count):
                self._m_handler_seconds.observe(elapsed)
            self._m_in_flight.dec(count)

    async def _handle(self, messages: list[RawDelivery]) -> None:
        deliveries = [m.to_delivery(self._queue_name) for m in messages]
        outcomes: list[Outcome]
        try:
            outcomes = await self._handler(deliveries)
            if len(outcomes) != len(deliveries):
                raise BrokerAdapterError(
                    f"batch handler answered {len(outcomes)} of {len(deliveries)} deliveries")
        except asyncio.CancelledError:
            # Shutdown while handling: give the messages back untouched for another worker.
            for message in messages:
                self._acks.settle_elsewhere(message)
            await asyncio.gather(*(self._settle_quietly(m, requeue=True) for m in messages))
            raise
        except Exception as exc:
            # A bug of the handler as a whole: no verdict on any one message, so all go back.
            log.exception("batch handler failed", extra={"queue": self._queue_name})
            outcomes = [Requeue(f"handler error: {type(exc).__name__}")] * len(deliveries)
        slow = []
        for message, delivery, outcome in zip(messages, deliveries, outcomes, strict=True):
            if isinstance(outcome, Ack):
                # The common case, settled here without a coroutine of its own.
                self._acks.ack(message)
                self._m_acked.inc()
            else:
                slow.append(self._apply(message, delivery, outcome))
        if slow:
            await asyncio.gather(*slow)

    async def _apply(
        self, message: RawDelivery, delivery: Delivery, outcome: Outcome
    ) -> None:
        try:
            if isinstance(outcome, Ack):
                self._acks.ack(message)
                self._m_acked.inc()
            elif isinstance(outcome, DeadLetter):
                await self._dead_letter(message, delivery, outcome)
            else:
                # Back off a little so a transient fault does not become a hot loop; the
                # delivery count grows the wait, the delivery limit ends it.
                backoff = self._requeue_backoff_s * (2**delivery.delivery_count)
                await asyncio.sleep(min(backoff, 2.0))
                self._acks.settle_elsewhere(message)
                await message.nack(requeue=True)
                metrics.CONSUMED.labels(queue=self._queue_name, outcome="requeue").inc()
                log.warning(
                    "requeued",
                    extra={"queue": self._queue_name, "detail": outcome.detail,
                           "delivery_count": delivery.delivery_count},
                )
        except Exception:
            log.warning("could not settle delivery; the broker will redeliver it", exc_info=True)

    async def _dead_letter(
        self, message: RawDelivery, delivery: Delivery, outcome: DeadLetter
    ) -> None:
        metrics.REJECTED.labels(queue=self._queue_name, reason=outcome.code).inc()
        metrics.CONSUMED.labels(queue=self._queue_name, outcome="dead_letter").inc()
        log.warning(
            "dead-lettered",
            extra={"queue": self._queue_name, "reason": outcome.code,
                   "detail": outcome.detail[:_MAX_DETAIL], "message_id": delivery.message_id,
                   "user_id": delivery.user_id},
        )
        headers: dict[str, Any] = {
            H_REASON: outcome.code,
            H_DETAIL: outcome.detail[:_MAX_DETAIL],
            H_QUEUE: self._queue_name,
            H_CONSUMER: self._publisher.identity,
            H_REJECTED_AT: int(time.time() * 1000),
        }
        if delivery.user_id is not None:
            headers[H_ORIGINAL_USER] = delivery.user_id
        try:
            await self._publisher.publish(
                self._dead_letter_exchange,
                self._queue_name,
                OutgoingMessage(
                    body=delivery.body,
                    message_id=delivery.message_id or "",
                    correlation_id=delivery.correlation_id,
                    msg_type=delivery.msg_type,
                    headers=headers,
                ),
            )
        except TransportError:
            log.warning("dead-letter republish failed; falling back to broker dead-lettering",
                        exc_info=True)
            self._acks.settle_elsewhere(message)
            await message.reject(requeue=False)
            return
        self._acks.ack(message)

    @staticmethod
    async def _settle_quietly(message: RawDelivery, *, requeue: bool) -> None:
        try:
            await message.nack(requeue=requeue)
        except Exception:
            log.debug("nack on a dead channel ignored; the broker redelivers", exc_info=True)

    async def stop(self, *, drain_timeout_s: float = 10.0) -> None:
        """Stop taking deliveries, let in-flight ones finish, then close the channel; every
        step is bounded, whatever state the broker or the link is in."""
        if self._stopping:
            return
        self._stopping = True
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await asyncio.wait_for(self._queue.cancel(self._consumer_tag), _CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a dead channel or link: nothing more to cancel
                log.debug("consumer cancel failed", exc_info=True)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=drain_timeout_s)
        except TimeoutError:
            log.warning("drain timed out; cancelling %d handlings", len(self._in_flight))
            cancelled = list(self._in_flight)
            for task in cancelled:
                task.cancel()
            # Their requeues and claim releases finish before the channel and store close.
            await asyncio.wait(cancelled, timeout=_CLOSE_TIMEOUT_S)
        try:
            await asyncio.wait_for(self._acks.drain(), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("acks not sent before shutdown; the broker will redeliver")
        if self._channel is not None and not self._channel.is_closed:
            try:
                await asyncio.wait_for(self._channel.close(), _CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - the broker will drop it with the connection
                log.debug("channel close failed", exc_info=True)
