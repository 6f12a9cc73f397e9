"""``broker_adapter.turns``: once per loop turn, batches per turn, and where blocking work runs."""

from __future__ import annotations

import asyncio
import threading

import pytest

from broker_adapter.turns import MIN_THREAD_BATCH, EnvelopeWorker, PerTurn, TurnBatcher


async def test_per_turn_runs_once_per_turn_however_often_scheduled() -> None:
    calls: list[int] = []
    turn = PerTurn(lambda: calls.append(1))
    for _ in range(5):
        turn.schedule()
    assert calls == []
    await asyncio.sleep(0)
    assert calls == [1]
    turn.schedule()
    turn.cancel()
    await asyncio.sleep(0)
    assert calls == [1]
    turn.schedule()
    turn.run_now()
    assert calls == [1, 1]
    await asyncio.sleep(0)
    assert calls == [1, 1]


async def test_submissions_of_one_turn_run_as_one_batch_in_order() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int | Exception]:
        batches.append(items)
        return [i * 10 if i != 3 else ValueError("three") for i in items]

    batcher: TurnBatcher[int, int] = TurnBatcher(run, max_batch=100)
    first, second = batcher.submit([1, 2]), batcher.submit([3])
    assert await first == [10, 20]
    answers = await second
    assert isinstance(answers[0], ValueError)
    assert batches == [[1, 2, 3]]


async def test_submissions_while_a_batch_runs_go_together_into_the_next() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int | Exception]:
        batches.append(items)
        if len(batches) == 1:
            await release.wait()
        return list(items)

    batcher: TurnBatcher[int, int] = TurnBatcher(run, max_batch=3)
    first = batcher.submit([0])
    await asyncio.sleep(0.01)
    later = [batcher.submit([i]) for i in range(1, 6)]
    release.set()
    assert await first == [0]
    assert [await f for f in later] == [[1], [2], [3], [4], [5]]
    # Bounded by max_batch while they waited.
    assert batches == [[0], [1, 2, 3], [4, 5]]


async def test_a_failing_run_fails_each_caller_of_its_batch_and_not_the_next() -> None:
    calls = 0

    async def run(items: list[int]) -> list[int | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("worker died")
        return list(items)

    batcher: TurnBatcher[int, int] = TurnBatcher(run, max_batch=10)
    with pytest.raises(RuntimeError):
        await batcher.submit([1])
    assert await batcher.submit([2]) == [2]


async def test_small_work_runs_inline_and_large_work_on_the_thread() -> None:
    worker = EnvelopeWorker()
    try:
        assert await worker.run(threading.get_ident, 1) == threading.get_ident()
        assert await worker.run(threading.get_ident, MIN_THREAD_BATCH) != threading.get_ident()
    finally:
        worker.close()


async def test_large_jobs_run_on_one_thread_in_order_and_small_ones_do_not_wait() -> None:
    worker = EnvelopeWorker()
    started, finish = threading.Event(), threading.Event()
    order: list[str] = []

    def slow() -> str:
        started.set()
        finish.wait(5)
        order.append("slow")
        return threading.current_thread().name

    def later() -> str:
        order.append("later")
        return threading.current_thread().name

    try:
        first = asyncio.ensure_future(worker.run(slow, MIN_THREAD_BATCH))
        second = asyncio.ensure_future(worker.run(later, MIN_THREAD_BATCH))
        await asyncio.to_thread(started.wait, 5)
        # A lone delivery's work does not queue behind a large batch.
        assert await worker.run(lambda: order.append("small"), 1) is None
        finish.set()
        names = {await first, await second}
    finally:
        worker.close()
    assert order == ["small", "slow", "later"]
    assert len(names) == 1 and threading.current_thread().name not in names


async def test_without_a_thread_everything_runs_inline() -> None:
    worker = EnvelopeWorker(use_thread=False)
    assert await worker.run(threading.get_ident, 1000) == threading.get_ident()
    worker.close()
