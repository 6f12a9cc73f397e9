"""One socket write per event-loop turn instead of one per AMQP frame.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiormq import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

from broker_adapter.turns import PerTurn

log = logging.getLogger("broker_adapter.transport")

# A TLS record carries at most 16 KiB; a few of them per write keep the buffer small while the
# per-write cost is spread over many frames.
DEFAULT_MAX_PENDING = 64 * 1024
STREAM_LIMIT = 2**16  # asyncio.open_connection's default buffer limit


@dataclass
class WriteStats:
    """What went through a connection's writers: ``chunks`` written by aiormq (one per
    frame batch it marshals) and ``writes`` handed to the transport. Shared by every socket of
    one robust connection."""

    chunks: int = 0
    writes: int = 0
    bytes: int = 0


class CoalescingStreamWriter(asyncio.StreamWriter):
    """A ``StreamWriter`` whose writes within one loop turn reach the transport as one write."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.BaseProtocol,
        reader: asyncio.StreamReader | None,
        loop: asyncio.AbstractEventLoop,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        stats: WriteStats | None = None,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self.stats = stats if stats is not None else WriteStats()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._max_pending = max_pending
        self._flush_turn = PerTurn(self._scheduled_flush)
        # A write that failed in the scheduled flush is raised to the next caller, so the
        # connection's writer task learns of it as it would have from a direct write.
        self._failed: BaseException | None = None

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._raise_failure()
        if not data:
            return
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)
        self.stats.chunks += 1
        if self._pending_bytes >= self._max_pending:
            self.flush()
        else:
            self._flush_turn.schedule()

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in data:
            self.write(chunk)

    def flush(self) -> None:
        """Hand everything pending to the transport now, as one write."""
        self._flush_turn.cancel()
        if not self._pending:
            return
        block = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self.stats.writes += 1
        self.stats.bytes += len(block)
        super().write(block)

    def _scheduled_flush(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - kept for the next write or drain
            self._failed = exc

    def _raise_failure(self) -> None:
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed

    async def drain(self) -> None:
        # No flush here: aiormq drains after every publish frame, which would undo the
        # coalescing. What drain is for, flow control, still holds: the pending block is
        # bounded by ``max_pending`` and the transport's own limits apply once it is written
        # at the start of the next loop turn.
        self._raise_failure()
        await super().drain()

    def write_eof(self) -> None:
        self.flush()
        super().write_eof()

    def close(self) -> None:
        try:
            self.flush()
        except Exception:  # closing anyway; the bytes could not be sent
            log.debug("pending bytes not written at close", exc_info=True)
        super().close()


async def open_coalescing_connection(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    max_pending: int = DEFAULT_MAX_PENDING,
    stats: WriteStats | None = None,
    **kwargs: Any,
) -> tuple[asyncio.StreamReader, CoalescingStreamWriter]:
    """``asyncio.open_connection`` with a ``CoalescingStreamWriter``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(
        lambda: protocol, host, port, ssl=ssl_context, **kwargs
    )
    writer = CoalescingStreamWriter(
        transport, protocol, reader, loop, max_pending=max_pending, stats=stats
    )
    return reader, writer


class CoalescingTLSTransportFactory(TransportFactory):
    """aiormq transport factory: TLS to the broker with coalesced writes."""

    def __init__(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self._max_pending = max_pending
        self.stats = WriteStats()

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider")
        context = await provider.get_context()
        try:
            return await open_coalescing_connection(
                str(url.host), int(url.port or 5671), ssl_context=context,
                max_pending=self._max_pending, stats=self.stats, **kwargs,
            )
        except OSError as exc:
            # The same type aiormq's own factories raise, so reconnection logic treats it alike.
            raise AMQPConnectionError(*exc.args) from exc
