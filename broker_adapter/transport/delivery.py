"""What a handler sees of a delivery: an immutable copy, never an aio-pika object.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
