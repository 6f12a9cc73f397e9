"""Where the work of a busy party runs, and the one way it is flushed once per event-loop turn.

A consumer with prefetch N reads many deliveries per socket read. Doing their common steps once
for all of them (one ack frame, one socket write, one replay-store round, one hand-off to a
thread) is what makes the secure path affordable. Everything of that kind is built on ``PerTurn``:

- ``PerTurn``: a callback run once at the start of the next loop turn, however often it was
  asked for in this one (acks in ``transport/acks.py``, socket writes in
  ``transport/coalesce.py``, a consumer's dispatch of one turn's deliveries);
- ``TurnBatcher``: the items submitted in one turn, or while the previous batch still runs, go
  to ``run`` as one batch; each caller awaits only its own answers;
- ``EnvelopeWorker``: where opening work runs: inline on the loop for a small batch (a hand-off
  costs more than it saves there), else on ONE thread (ECDSA verification and AES-GCM release
  the GIL, so the loop keeps moving frames, completing claims and sealing replies meanwhile);
  the codec and the replay stores are safe from both at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
T = TypeVar("T")

# Batches smaller than this run on the loop: for a lone request the
# hand-off and the thread's wake-up cost more latency than the work they move.
MIN_THREAD_BATCH = 4


class PerTurn:
    """Calls ``callback`` once at the next loop turn, however many times ``schedule`` ran."""

    __slots__ = ("_callback", "_scheduled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._scheduled = False

    def schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._fire)

    def _fire(self) -> None:
        if self._scheduled:
            self._scheduled = False
            self._callback()

    def cancel(self) -> None:
        """Forget a scheduled call (the caller did the work itself)."""
        self._scheduled = False

    def run_now(self) -> None:
        """Run a scheduled callback at once (before closing what it writes to)."""
        if self._scheduled:
            self._fire()


@dataclass(slots=True)
class _Entry(Generic[ItemT]):
    items: list[ItemT]
    future: asyncio.Future[Any]


class TurnBatcher(Generic[ItemT, ResultT]):
    """``run`` answers every item in order, an ``Exception`` meaning "this item failed". If
    ``run`` raises, every caller of that batch gets the exception: nobody is left waiting."""

    def __init__(
        self,
        run: Callable[[list[ItemT]], Awaitable[list[ResultT | Exception]]],
        *,
        max_batch: int,
    ) -> None:
        self._run = run
        # A submission is never split, so one may exceed this alone.
        self._max_batch = max_batch
        self._pending: list[_Entry[ItemT]] = []
        self._running = False
        self._start = PerTurn(self._start_flush)
        self._flusher: asyncio.Task[None] | None = None

    def submit(self, items: list[ItemT]) -> asyncio.Future[list[ResultT | Exception]]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Entry(items, future))
        if not self._running:
            # The flush starts next turn, after every handler of this turn has submitted.
            self._start.schedule()
        return future

    def _start_flush(self) -> None:
        if not self._running and self._pending:
            self._running = True
            self._flusher = asyncio.ensure_future(self._flush())

    def _take(self) -> list[_Entry[ItemT]]:
        live = [e for e in self._pending if not e.future.cancelled()]
        taken, size = 0, 0
        while taken < len(live) and (
            taken == 0 or size + len(live[taken].items) <= self._max_batch
        ):
            size += len(live[taken].items)
            taken += 1
        self._pending = live[taken:]
        return live[:taken]

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                if batch:
                    await self._run_batch(batch)
        finally:
            self._running = False

    async def wait_idle(self, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, until no batch is being run."""
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            await asyncio.wait({flusher}, timeout=timeout_s)

    async def _run_batch(self, batch: list[_Entry[ItemT]]) -> None:
        try:
            results = await self._run([item for entry in batch for item in entry.items])
        except BaseException as exc:
            # Handed to every caller of this batch, so that nobody is left waiting.
            for entry in batch:
                if entry.future.done():
                    continue
                if isinstance(exc, Exception):
                    entry.future.set_exception(exc)
                else:
                    entry.future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        at = 0
        for entry in batch:
            mine = results[at:at + len(entry.items)]
            at += len(entry.items)
            if not entry.future.done():
                entry.future.set_result(mine)


class EnvelopeWorker:
    """Runs one party's opening work (checks 1-8): a small batch inline, a large one on ONE
    thread, in submission order (the codec and the replay stores are safe from two threads)."""

    def __init__(self, *, use_thread: bool = True) -> None:
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="envelope")
            if use_thread else None
        )

    async def run(self, work: Callable[[], T], size: int = 1) -> T:
        """``work()`` inline when it is small (or there is no thread), else on the thread."""
        if self._executor is None or size < MIN_THREAD_BATCH:
            return work()
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
