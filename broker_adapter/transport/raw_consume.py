"""Deliveries taken straight from aiormq, without aio-pika's per-message object and task.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage, ConsumerTag, TimeoutType
from aio_pika.robust_channel import RobustChannel
from aio_pika.robust_queue import RobustQueue
from aiormq.abc import DeliveredMessage
from pamqp.common import Arguments

from broker_adapter.errors import TransportError
from broker_adapter.transport.delivery import Delivery
from broker_adapter.transport.seams import record_robust_consumer


class RawDeliveryCallback:
    """A consumer callback that takes aiormq's ``DeliveredMessage`` (see the module text)."""

    __slots__ = ("on_delivered",)

    def __init__(
        self, on_delivered: Callable[[DeliveredMessage], Coroutine[Any, Any, None]]
    ) -> None:
        self.on_delivered = on_delivered


class RawDelivery:
    """One delivery as the ``Consumer`` needs it: its tag, its channel, nack and reject."""

    __slots__ = ("_message", "delivery_tag")

    def __init__(self, message: DeliveredMessage) -> None:
        self._message = message
        self.delivery_tag: int | None = message.delivery_tag

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        """The delivery's channel; raises once it is closed (its tag means nothing then), as
        aio-pika's ``IncomingMessage.channel`` does."""
        channel = self._message.channel
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("delivery's channel is closed")
        return channel

    async def nack(self, requeue: bool = True) -> None:
        await self.channel.basic_nack(self._tag(), requeue=requeue)

    async def reject(self, requeue: bool = False) -> None:
        await self.channel.basic_reject(self._tag(), requeue=requeue)

    def _tag(self) -> int:
        if self.delivery_tag is None:
            raise TransportError("delivery has no tag (consumed without acks)")
        return self.delivery_tag

    def to_delivery(self, queue: str) -> Delivery:
        props = self._message.header.properties
        headers = dict(props.headers or {})
        raw_count = headers.get("x-delivery-count", 0)
        return Delivery(
            body=self._message.body,
            queue=queue,
            message_id=props.message_id,
            correlation_id=props.correlation_id,
            msg_type=props.message_type,
            reply_to=props.reply_to,
            user_id=props.user_id,
            redelivered=bool(self._message.redelivered),
            delivery_count=raw_count if isinstance(raw_count, int) else 0,
            exchange=self._message.exchange,
            routing_key=self._message.routing_key,
            headers=headers,
        )


class RawConsumeQueue(RobustQueue):
    async def consume(  # noqa: PLR0917 - the signature of RobustQueue.consume
        self,
        callback: Callable[[AbstractIncomingMessage], Awaitable[Any]] | RawDeliveryCallback,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Arguments = None,
        consumer_tag: ConsumerTag | None = None,
        timeout: TimeoutType = None,
        robust: bool = True,
    ) -> ConsumerTag:
        if not isinstance(callback, RawDeliveryCallback):
            return await super().consume(
                callback, no_ack=no_ack, exclusive=exclusive, arguments=arguments,
                consumer_tag=consumer_tag, timeout=timeout, robust=robust,
            )
        channel = await self.channel.get_underlay_channel()
        result = await channel.basic_consume(
            queue=self.name,
            consumer_callback=callback.on_delivered,
            exclusive=exclusive,
            no_ack=no_ack,
            arguments=arguments,
            consumer_tag=consumer_tag,
            timeout=timeout,
        )
        tag = result.consumer_tag
        if tag is None:
            raise TransportError(f"broker gave no consumer tag for {self.name}")
        if robust:
            # The table ``RobustQueue.restore`` re-subscribes from after a reconnect, and the one
            # ``RobustChannel`` looks a broker-sent basic.cancel up in.
            record_robust_consumer(self, tag, {
                "callback": callback, "no_ack": no_ack, "exclusive": exclusive,
                "arguments": arguments,
            })
        return tag


class RawConsumeChannel(RobustChannel):
    """A robust channel whose queues accept ``RawDeliveryCallback`` consumers."""

    QUEUE_CLASS = RawConsumeQueue
