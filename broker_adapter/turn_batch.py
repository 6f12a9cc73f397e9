"""Calls made in one turn of the event loop, run together as one batch.

A consumer with prefetch N gets many deliveries per socket read; their handlers all reach the
same step (open an envelope, claim a replay entry, complete it) before the loop turns again.
``TurnBatcher`` lets each handler ``await submit(item)`` as if alone, while the items of one turn
go to ``run`` once: one SQLite transaction, one Redis pipeline, one hand-off to a worker thread.
A caller that already holds a batch (``submit_many``) joins with all its items and one future.

While ``run`` is busy with one batch, new submissions wait and go together into the next one,
so a slow ``run`` (a worker thread) gets larger batches exactly when it is the bottleneck.

``run`` answers every item in order, an ``Exception`` instance meaning "this item failed" (so
result types must not be exceptions). If ``run`` itself raises, every caller of that batch gets
``on_failure(exc)``: nobody is left waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(slots=True)
class _Entry(Generic[ItemT]):
    items: list[ItemT]
    # A lone item's future gets its result or exception; a list's future gets the list.
    future: asyncio.Future[Any]
    single: bool


class TurnBatcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        run: Callable[[list[ItemT]], Awaitable[list[ResultT | Exception]]],
        on_failure: Callable[[BaseException], Exception],
        *,
        max_batch: int | None = None,
    ) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError("max_batch must be positive")
        self._run = run
        self._on_failure = on_failure
        # Submissions are taken whole until a batch reaches this many items, so a list
        # submitted with ``submit_many`` is never split (one may exceed it alone).
        self._max_batch = max_batch
        self._pending: list[_Entry[ItemT]] = []
        self._flusher: asyncio.Task[None] | None = None

    def submit(self, item: ItemT) -> asyncio.Future[ResultT]:
        """Queue ``item`` for this turn's batch; the future holds its own answer."""
        return self._enqueue(_Entry([item], self._new_future(), True))

    def submit_many(self, items: list[ItemT]) -> asyncio.Future[list[ResultT | Exception]]:
        """Queue ``items`` together; the future holds their answers in order."""
        return self._enqueue(_Entry(list(items), self._new_future(), False))

    @staticmethod
    def _new_future() -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _enqueue(self, entry: _Entry[ItemT]) -> asyncio.Future[Any]:
        self._pending.append(entry)
        if self._flusher is None or self._flusher.done():
            # A task starts on the loop's next turn, after every handler already scheduled in
            # this turn has had its chance to submit.
            self._flusher = asyncio.ensure_future(self._flush())
        return entry.future

    async def drain(self) -> None:
        """Wait until everything submitted so far has been answered."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    def _take(self) -> list[_Entry[ItemT]]:
        live = [e for e in self._pending if not e.future.cancelled()]
        if self._max_batch is None:
            self._pending = []
            return live
        taken, size = 0, 0
        while taken < len(live) and (taken == 0 or size + len(live[taken].items) <= self._max_batch):
            size += len(live[taken].items)
            taken += 1
        self._pending = live[taken:]
        return live[:taken]

    async def _flush(self) -> None:
        while self._pending:
            batch = self._take()
            if not batch:
                continue
            try:
                results = await self._run([item for entry in batch for item in entry.items])
            except BaseException as exc:
                error = self._on_failure(exc)
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise  # cancellation or interpreter exit: stop flushing
                continue
            at = 0
            for entry in batch:
                mine = results[at:at + len(entry.items)]
                at += len(entry.items)
                if entry.future.done():
                    continue
                if not entry.single:
                    entry.future.set_result(mine)
                elif isinstance(mine[0], Exception):
                    entry.future.set_exception(mine[0])
                else:
                    entry.future.set_result(mine[0])
            if at != len(results):
                raise RuntimeError(f"batch run answered {len(results)} of {at} items")
