"""The transport's two uses of library internals still work with the installed libraries."""

from __future__ import annotations

import asyncio

from aio_pika.robust_queue import RobustQueue

from broker_adapter.transport.seams import (
    check_library_seams,
    record_robust_consumer,
    unbound_write_queue,
)


def test_the_installed_libraries_have_the_seams_we_use() -> None:
    check_library_seams()


async def test_an_unbound_write_queue_takes_a_burst_without_blocking() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=10)
    unbound_write_queue(queue)
    for i in range(1000):
        queue.put_nowait(i)
    assert queue.qsize() == 1000


def test_a_recorded_consumer_is_in_the_table_the_robust_queue_restores_from() -> None:
    queue = RobustQueue.__new__(RobustQueue)
    queue._consumers = {}
    record_robust_consumer(queue, "tag-1", {"callback": print, "no_ack": False})
    assert queue._consumers == {"tag-1": {"callback": print, "no_ack": False}}
