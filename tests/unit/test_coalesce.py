"""The coalescing stream writer over a real loopback TCP connection (no broker, no TLS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from broker_adapter.transport.coalesce import CoalescingStreamWriter, open_coalescing_connection
from broker_adapter.transport.connection import unbound_write_queue


@dataclass
class Link:
    writer: CoalescingStreamWriter
    received: asyncio.StreamReader  # the server's end


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()
    server_writers: list[asyncio.StreamWriter] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_writers.append(writer)
        await accepted.put(reader)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await open_coalescing_connection("127.0.0.1", port, ssl_context=None,
                                                 max_pending=1024)
    received = await asyncio.wait_for(accepted.get(), 5)
    yield Link(writer, received)
    writer.close()
    for w in server_writers:
        w.close()
    server.close()
    await server.wait_closed()


async def test_writes_of_one_loop_turn_become_one_transport_write(link: Link) -> None:
    for i in range(10):
        link.writer.write(b"frame%d;" % i)
    assert link.writer.stats.writes == 0  # nothing written yet: waits for the turn to end
    assert link.writer.pending_bytes == 70
    await asyncio.sleep(0)  # the next loop turn flushes
    await asyncio.sleep(0)
    assert link.writer.stats.writes == 1
    assert link.writer.stats.chunks == 10
    data = await asyncio.wait_for(link.received.readexactly(70), 5)
    assert data == b"".join(b"frame%d;" % i for i in range(10))  # in order, nothing lost


async def test_separate_turns_are_separate_writes_and_order_holds(link: Link) -> None:
    sent = []
    for turn in range(5):
        for i in range(3):
            chunk = b"t%di%d;" % (turn, i)
            sent.append(chunk)
            link.writer.write(chunk)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert link.writer.stats.writes == 5
    expected = b"".join(sent)
    assert await asyncio.wait_for(link.received.readexactly(len(expected)), 5) == expected


async def test_a_full_block_is_written_at_once(link: Link) -> None:
    link.writer.write(b"a" * 600)
    assert link.writer.stats.writes == 0
    link.writer.write(b"b" * 600)  # 1,200 >= max_pending 1,024: written now, not next turn
    assert link.writer.stats.writes == 1
    assert link.writer.pending_bytes == 0
    data = await asyncio.wait_for(link.received.readexactly(1200), 5)
    assert data == b"a" * 600 + b"b" * 600


async def test_drain_does_not_force_a_write_but_close_does(link: Link) -> None:
    link.writer.write(b"x" * 10)
    await link.writer.drain()
    # aiormq drains after every publish frame; flushing there would undo the coalescing.
    assert link.writer.stats.writes == 0
    link.writer.write(b"y" * 10)
    link.writer.close()  # what is pending goes out before the socket closes
    assert link.writer.stats.writes == 1
    assert await asyncio.wait_for(link.received.read(), 5) == b"x" * 10 + b"y" * 10


async def test_a_failed_scheduled_write_reaches_the_next_caller(link: Link) -> None:
    class Boom(Exception):
        pass

    def failing_write(data: bytes) -> None:
        raise Boom("socket gone")

    link.writer.transport.write = failing_write  # type: ignore[method-assign]
    link.writer.write(b"lost")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    with pytest.raises(Boom):
        link.writer.write(b"next")
    del link.writer.transport.write  # the instance attribute; the class's write is back


async def test_unbound_write_queue_lets_puts_through_a_full_queue() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=2)
    unbound_write_queue(queue)
    for i in range(50):
        await asyncio.wait_for(queue.put(i), 1)  # would block at 2 without it
    assert queue.qsize() == 50
