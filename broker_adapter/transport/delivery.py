"""What a handler sees of a delivery, and the outcomes it may return.

Handlers never touch aio-pika objects: they get an immutable ``Delivery`` and return an
explicit ``Outcome``. The consumer turns the outcome into ack, dead-letter or requeue, so no
code path can forget to settle a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker_adapter.errors import BrokerAdapterError


@dataclass(frozen=True)
class Delivery:
    body: bytes
    queue: str
    message_id: str | None
    correlation_id: str | None
    msg_type: str | None
    reply_to: str | None
    # Set by the publisher and validated by RabbitMQ against the certificate login; ``None``
    # when the publisher left it out, which a secure consumer must treat as a rejection.
    user_id: str | None
    redelivered: bool
    # Quorum queues count deliveries in ``x-delivery-count`` (absent on the first delivery).
    delivery_count: int
    exchange: str | None
    routing_key: str | None
    headers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ack:
    """Processed (or a harmless duplicate): remove the message."""


@dataclass(frozen=True)
class DeadLetter:
    """Permanently unacceptable: move it to the dead-letter queue with a coded reason."""

    code: str
    detail: str = ""


@dataclass(frozen=True)
class Requeue:
    """Transient failure: deliver again later; the queue's delivery limit bounds the loop."""

    detail: str = ""


Outcome = Ack | DeadLetter | Requeue


def outcome_for_error(exc: Exception) -> Outcome:
    """The outcome of a handling that raised ``exc``: our coded errors are verdicts on the
    message (dead-letter with the code), unless they are transient failures of our own
    infrastructure; anything else is a bug or a fault that a redelivery may not meet again."""
    if isinstance(exc, BrokerAdapterError):
        if exc.transient:
            return Requeue(f"{exc.code}: {exc.detail}"[:200])
        return DeadLetter(exc.code, exc.detail)
    return Requeue(f"handler error: {type(exc).__name__}")
