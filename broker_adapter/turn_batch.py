"""Calls made in one turn of the event loop, run together as one batch.

A consumer with prefetch N gets many deliveries per socket read; their handlers all reach the
same step (open an envelope, claim a replay entry, complete it) before the loop turns again.
``TurnBatcher`` lets each handler ``await submit(item)`` as if alone, while the items of one turn
go to ``run`` once: one SQLite transaction, one Redis pipeline, one hand-off to a worker thread.

``run`` answers every item in order, an ``Exception`` instance meaning "this item failed" (so
result types must not be exceptions). If ``run`` itself raises, every caller of that batch gets
``on_failure(exc)``: nobody is left waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class TurnBatcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        run: Callable[[list[ItemT]], Awaitable[list[ResultT | Exception]]],
        on_failure: Callable[[BaseException], Exception],
    ) -> None:
        self._run = run
        self._on_failure = on_failure
        self._pending: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def submit(self, item: ItemT) -> asyncio.Future[ResultT]:
        """Queue ``item`` for this turn's batch; the future holds its own answer."""
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            # A task starts on the loop's next turn, after every handler already scheduled in
            # this turn has had its chance to submit.
            self._flusher = asyncio.ensure_future(self._flush())
        return future

    async def drain(self) -> None:
        """Wait until everything submitted so far has been answered."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _flush(self) -> None:
        while self._pending:
            batch = [(i, f) for i, f in self._pending if not f.cancelled()]
            self._pending = []
            if not batch:
                continue
            try:
                results = await self._run([item for item, _ in batch])
            except BaseException as exc:
                error = self._on_failure(exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise  # cancellation or interpreter exit: stop flushing
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
