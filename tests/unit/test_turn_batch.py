"""``TurnBatcher``: the calls of one loop turn run as one batch, each with its own answer."""

from __future__ import annotations

import asyncio

import pytest

from broker_adapter.turn_batch import TurnBatcher


class Boom(Exception):
    pass


def _batcher(batches: list[list[int]]) -> TurnBatcher[int, int]:
    async def run(items: list[int]) -> list[int | Exception]:
        batches.append(items)
        if -1 in items:
            raise RuntimeError("the whole batch failed")
        return [ValueError(str(i)) if i % 5 == 0 else i * 10 for i in items]

    return TurnBatcher(run, lambda exc: Boom(repr(exc)))


async def test_one_turn_one_batch_each_caller_its_answer() -> None:
    batches: list[list[int]] = []
    batcher = _batcher(batches)
    results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 5, 3)),
                                   return_exceptions=True)
    assert batches == [[1, 2, 5, 3]]
    assert results[:2] == [10, 20] and results[3] == 30
    assert isinstance(results[2], ValueError) and str(results[2]) == "5"
    # A later turn is a new batch.
    assert await batcher.submit(7) == 70
    assert batches == [[1, 2, 5, 3], [7]]


async def test_a_failed_batch_fails_every_caller_and_the_next_batch_runs() -> None:
    batches: list[list[int]] = []
    batcher = _batcher(batches)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(-1), return_exceptions=True)
    assert all(isinstance(r, Boom) for r in results)
    assert await batcher.submit(2) == 20


async def test_a_cancelled_caller_is_left_out() -> None:
    batches: list[list[int]] = []
    batcher = _batcher(batches)
    gone = batcher.submit(1)
    gone.cancel()
    assert await batcher.submit(2) == 20
    await batcher.drain()
    assert batches == [[2]]
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_list_joins_the_turn_whole_and_gets_its_answers_in_order() -> None:
    batches: list[list[int]] = []
    batcher = _batcher(batches)
    lone, many = batcher.submit(1), batcher.submit_many([2, 5, 3])
    assert await lone == 10
    answers = await many
    assert answers[0] == 20 and answers[2] == 30 and isinstance(answers[1], ValueError)
    assert batches == [[1, 2, 5, 3]]


async def test_max_batch_slices_by_submission_and_later_slices_wait_their_turn() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int | Exception]:
        batches.append(items)
        await asyncio.sleep(0)  # a hand-off: new submissions queue meanwhile
        return [i * 10 for i in items]

    batcher: TurnBatcher[int, int] = TurnBatcher(run, lambda exc: Boom(repr(exc)), max_batch=4)
    futures = [batcher.submit_many([1, 2, 3]), batcher.submit_many([4, 5]),
               batcher.submit(6), batcher.submit_many([7, 8, 9, 10, 11])]
    results = await asyncio.gather(*futures)
    assert results == [[10, 20, 30], [40, 50], 60, [70, 80, 90, 100, 110]]
    # A list is never split; one larger than max_batch goes alone.
    assert batches == [[1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11]]
    with pytest.raises(ValueError):
        TurnBatcher(run, lambda exc: Boom(repr(exc)), max_batch=0)
