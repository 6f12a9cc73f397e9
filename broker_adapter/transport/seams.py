"""The only places where the transport touches a library's private state, each checked.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aio_pika.robust_queue import RobustQueue

from broker_adapter.errors import BrokerConfigError


def unbound_write_queue(queue: object) -> None:
    """Make aiormq's connection write queue unbounded (what ``full()`` and ``put()`` read)."""
    if isinstance(queue, asyncio.Queue):
        queue._maxsize = 0  # type: ignore[attr-defined]  # noqa: SLF001 - checked below


def record_robust_consumer(queue: RobustQueue, tag: str, consumer: dict[str, Any]) -> None:
    """Enter ``consumer`` (consume's keyword arguments) in the queue's restore table."""
    queue._consumers[tag] = consumer  # noqa: SLF001 - checked by check_library_seams


def check_library_seams() -> None:
    probe: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    unbound_write_queue(probe)
    probe.put_nowait(1)
    if probe.full():
        raise BrokerConfigError("asyncio.Queue changed: cannot lift aiormq's write-queue bound")
    if "_consumers" not in getattr(RobustQueue, "__slots__", ()):
        raise BrokerConfigError("aio-pika's RobustQueue has no consumer table any more: "
                                "raw consumers would not be restored after a reconnect")
