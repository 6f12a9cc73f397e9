"""Coalesced acknowledgements: one ``basic.ack(multiple=True)`` for a run of finished deliveries.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from broker_adapter.turns import PerTurn

log = logging.getLogger("broker_adapter.transport")


@dataclass(frozen=True)
class AckPlan:
    # Ack every delivery up to and including this tag with one frame (``None``: no prefix).
    up_to: int | None = None
    # Finished deliveries behind an unfinished one: acked one by one.
    singles: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return self.up_to is None and not self.singles


@dataclass
class AckLedger:
    """The unsettled deliveries of one channel and which of them are finished."""

    # Insertion order is arrival order, and the broker numbers deliveries upwards per channel.
    _unsettled: dict[int, bool] = field(default_factory=dict)
    _finished: int = 0

    def delivered(self, tag: int) -> None:
        self._unsettled[tag] = False

    def finished(self, tag: int) -> None:
        """``tag`` is done and may be acked (by the next plan)."""
        if self._unsettled.get(tag) is False:
            self._unsettled[tag] = True
            self._finished += 1

    def settled_elsewhere(self, tag: int) -> None:
        """``tag`` is being nacked or rejected on its own: never cover it with an ack."""
        if self._unsettled.pop(tag, False):
            self._finished -= 1

    @property
    def unsettled(self) -> int:
        return len(self._unsettled)

    def take(self) -> AckPlan:
        """What to send now; the tags in it leave the ledger."""
        if not self._finished:
            return AckPlan()
        up_to = None
        for tag, done in self._unsettled.items():
            if not done:
                break
            up_to = tag
        if up_to is not None:
            for tag in list(self._unsettled):
                del self._unsettled[tag]
                self._finished -= 1
                if tag == up_to:
                    break
        singles: tuple[int, ...] = ()
        if self._finished:
            singles = tuple(tag for tag, done in self._unsettled.items() if done)
            for tag in singles:
                del self._unsettled[tag]
            self._finished = 0
        return AckPlan(up_to, singles)


class Delivered(Protocol):
    """What settling needs of a delivery (``raw_consume.RawDelivery`` has it, as aio-pika's
    ``IncomingMessage`` does). ``channel`` raises once the channel is closed."""

    @property
    def delivery_tag(self) -> int | None: ...

    @property
    def channel(self) -> object: ...


class AckBatcher:
    """Sends the acks of one consumer's channel, coalesced per turn of the event loop."""

    def __init__(self) -> None:
        self._channel: object | None = None
        self._ledger = AckLedger()
        self._flush_turn = PerTurn(self._flush)
        self._plans: deque[tuple[object, AckPlan]] = deque()
        self._sender: asyncio.Task[None] | None = None

    def delivered(self, message: Delivered) -> None:
        channel = _channel_of(message)
        if channel is None:
            return
        if channel is not self._channel:
            # A new channel after a reconnect: the old tags are void (the broker requeued them).
            self._channel = channel
            self._ledger = AckLedger()
        if message.delivery_tag is not None:
            self._ledger.delivered(message.delivery_tag)

    def ack(self, message: Delivered) -> None:
        """Mark ``message`` finished; its ack goes out at the end of this loop turn."""
        if _channel_of(message) is not self._channel or message.delivery_tag is None:
            return  # Its channel is gone; so is the delivery.
        self._ledger.finished(message.delivery_tag)
        self._flush_turn.schedule()

    def settle_elsewhere(self, message: Delivered) -> None:
        """Call before nacking or rejecting ``message`` individually."""
        if _channel_of(message) is self._channel and message.delivery_tag is not None:
            self._ledger.settled_elsewhere(message.delivery_tag)

    def _flush(self) -> None:
        plan = self._ledger.take()
        if plan.empty or self._channel is None:
            return
        self._plans.append((self._channel, plan))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_all())

    async def _send_all(self) -> None:
        while self._plans:
            channel, plan = self._plans.popleft()
            try:
                if plan.up_to is not None:
                    await channel.basic_ack(plan.up_to, multiple=True)  # type: ignore[attr-defined]
                for tag in plan.singles:
                    await channel.basic_ack(tag)  # type: ignore[attr-defined]
            except Exception:
                # A channel that died meanwhile: the broker redelivers what was not acked,
                # and the replay guard makes that harmless.
                log.warning("could not send acks; the broker will redeliver", exc_info=True)

    async def drain(self) -> None:
        """Send whatever is pending now and wait for it (before closing the channel)."""
        self._flush_turn.run_now()
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)


def _channel_of(message: Delivered) -> object | None:
    """The delivery's channel, or None once it is closed (aio-pika raises then)."""
    try:
        return message.channel
    except Exception:  # noqa: BLE001 - ChannelInvalidStateError: the delivery is void
        return None
