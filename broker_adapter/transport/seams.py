"""The only places where the transport touches a library's private state, each checked.

aio-pika and aiormq have no public API for two things the transport needs:
- lifting aiormq's 10-frame bound on a connection's write queue (``asyncio.Queue`` has no setter
  for ``maxsize``): with the bound, a burst of publishes hands the channel lock over one waiter
  per loop turn and every frame gets a socket write of its own;
- recording a raw-delivery consumer in ``RobustQueue``'s consumer table, which the robust
  channel re-subscribes from after a reconnect and looks a broker-sent ``basic.cancel`` up in.
``check_library_seams`` verifies both still exist in the shape used here; ``connect`` calls it,
so a library upgrade that moves them fails at start with one clear error, not at the first
reconnect (``tests/unit/test_seams.py`` runs it too).
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
