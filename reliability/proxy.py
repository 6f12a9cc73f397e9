"""An asyncio TCP proxy between a party and its broker(s) that a scenario can cut and restore.

It forwards bytes only, so TLS stays end to end: the party still verifies the broker's
certificate (the dev certificate names 127.0.0.1, which is where the proxy listens) and the
broker still sees the party's client certificate.

- ``cut()`` aborts every open connection at once (both directions see a reset, exactly what a
  dropped link or a crashed middlebox produces) and refuses new connections until ``restore()``.
- With several upstreams it is also a small failover load balancer: each new connection goes
  to the first upstream that accepts it. That is how the cluster scenario lets clients that take
  one broker address (aio-pika's robust connection takes one URL) fail over to a live node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("reliability.proxy")

_CHUNK = 64 * 1024
_CONNECT_TIMEOUT_S = 2.0


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0  # connections turned away while cut or with no live upstream
    aborted: int = 0  # live connections killed by cut()
    bytes_up: int = 0
    bytes_down: int = 0


class _Link:
    """One client connection and its upstream connection."""

    def __init__(
        self,
        client: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        upstream_addr: tuple[str, int],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.upstream_addr = upstream_addr

    def abort(self) -> None:
        # abort() closes the socket without a FIN handshake and drops buffered data, so the
        # peers see the link die mid-stream rather than a polite close.
        for writer in (self.client, self.upstream):
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()


class TcpProxy:
    """Listen on ``listen_host:listen_port`` (0: pick a free port) and forward to ``upstreams``."""

    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]],
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        if not upstreams:
            raise ValueError("a proxy needs at least one upstream")
        self._upstreams = list(upstreams)
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut = False
        self.stats = ProxyStats()

    # ---- control ------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._listen_host

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def open_links(self) -> int:
        return len(self._links)

    def set_upstreams(self, upstreams: Sequence[tuple[str, int]]) -> None:
        """Change where new connections go (open ones stay where they are)."""
        if not upstreams:
            raise ValueError("a proxy needs at least one upstream")
        self._upstreams = list(upstreams)

    def upstream_of_links(self) -> list[tuple[str, int]]:
        """Which upstream each open connection goes to (for the cluster scenario's checks)."""
        return [link.upstream_addr for link in self._links]

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_client, self._listen_host, self._listen_port
        )
        # Keep the port across restarts of the proxy object's listener.
        self._listen_port = self.port

    def cut(self) -> int:
        """Kill every open connection and refuse new ones; returns how many were killed."""
        self._cut = True
        return self.abort_links()

    def abort_links(self, upstream: tuple[str, int] | None = None) -> int:
        """Kill open connections (only those to ``upstream`` if given) without refusing new ones."""
        victims = [
            link for link in self._links if upstream is None or link.upstream_addr == upstream
        ]
        for link in victims:
            link.abort()
            self._links.discard(link)
        self.stats.aborted += len(victims)
        return len(victims)

    def restore(self) -> None:
        """Accept and forward new connections again."""
        self._cut = False

    async def close(self) -> None:
        self.abort_links()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---- forwarding ---------------------------------------------------------------------------

    async def _open_upstream(
        self,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[str, int]] | None:
        for host, port in list(self._upstreams):
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), _CONNECT_TIMEOUT_S
                )
            except (TimeoutError, OSError):
                continue
            return reader, writer, (host, port)
        return None

    async def _on_client(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self._cut:
            self.stats.refused += 1
            client_writer.transport.abort()
            return
        opened = await self._open_upstream()
        if opened is None or self._cut:
            self.stats.refused += 1
            client_writer.transport.abort()
            if opened is not None:
                opened[1].transport.abort()
            return
        up_reader, up_writer, addr = opened
        link = _Link(client_writer, up_writer, addr)
        self._links.add(link)
        self.stats.accepted += 1
        up = asyncio.create_task(self._pump(client_reader, up_writer, upward=True))
        down = asyncio.create_task(self._pump(up_reader, client_writer, upward=False))
        for task in (up, down):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            # When either direction ends, the link is over: close both sides.
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._links.discard(link)
            link.abort()
            for task in (up, down):
                task.cancel()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upward: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    return
                if upward:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return
