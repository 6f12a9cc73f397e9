"""``SecureEndpoint.open_async`` with an executor: the deliveries of one loop turn are opened as
one batch on the worker thread, and each caller gets the verdict on its own delivery."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope_errors import EnvelopeError
from broker_adapter.replay import ReplayGuard
from broker_adapter.replay_stores import MemoryReplayStore
from broker_adapter.secure import SecureEndpoint
from broker_adapter.transport import Delivery, Publisher
from tests.unit.envelope_helpers import POLICY, TestPki, counter_rng, fixed_clock


def _delivery(body: bytes, user_id: str) -> Delivery:
    return Delivery(
        body=body, queue="network.requests", message_id=None, correlation_id=None,
        msg_type=None, reply_to=None, user_id=user_id, redelivered=False, delivery_count=0,
        exchange=None, routing_key=None,
    )


def _world() -> tuple[EnvelopeCodec, EnvelopeCodec, ReplayGuard]:
    """An AF's codec, the network's codec and the network's guard, under one test CA."""
    ca = TestPki()
    network, af = ca.party("network"), ca.party("af1.example.com")
    trust = ca.trust([network, af])
    clock = fixed_clock()
    sender = EnvelopeCodec(identity=af.identity, trust=trust, policy=POLICY, clock=clock,
                           rng=counter_rng(1))
    receiver = EnvelopeCodec(identity=network.identity, trust=trust, policy=POLICY, clock=clock,
                             rng=counter_rng(1000))
    guard = ReplayGuard(MemoryReplayStore(), window_ms=60_000, skew_ms=5_000,
                        in_progress_lease_ms=5_000, clock=clock)
    return sender, receiver, guard


class _NoBroker:
    """Opening never publishes; the publisher only lends its identity here."""


async def test_a_batch_answers_each_delivery_with_its_own_verdict() -> None:
    sender, receiver, guard = _world()
    publisher = Publisher(cast(Any, _NoBroker()), "network")
    with ThreadPoolExecutor(max_workers=1) as pool:
        endpoint = SecureEndpoint(codec=receiver, guard=guard, publisher=publisher,
                                  open_executor=pool)
        sealed = [sender.encode(recipient="network", msg_type="akma.t", body=bytes([i]))
                  for i in range(8)]
        bodies = [s.data for s in sealed]
        # One envelope altered in transit, in the middle: only its own caller sees the failure.
        bodies[3] = bodies[3][:-1] + bytes([bodies[3][-1] ^ 0x01])
        results = await asyncio.gather(
            *(endpoint.open_async(_delivery(b, "af1.example.com")) for b in bodies),
            return_exceptions=True,
        )
    for i, (result, envelope) in enumerate(zip(results, sealed, strict=True)):
        if i == 3:
            assert isinstance(result, EnvelopeError)
            continue
        assert not isinstance(result, BaseException)
        assert result.msg_id == envelope.msg_id and result.body == bytes([i])


@pytest.mark.parametrize("batch", [1, 3])
async def test_batches_follow_loop_turns(batch: int) -> None:
    # Calls made in one turn share a hand-off; a later call starts a new batch.
    sender, receiver, guard = _world()
    handoffs: list[int] = []

    class CountingPool(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            handoffs.append(len(args[0]) if args and isinstance(args[0], list) else -1)
            return super().submit(fn, *args, **kwargs)

    with CountingPool(max_workers=1) as pool:
        endpoint = SecureEndpoint(codec=receiver, guard=guard,
                                  publisher=Publisher(cast(Any, _NoBroker()), "network"),
                                  open_executor=pool)
        for _ in range(2):
            data = [sender.encode(recipient="network", msg_type="akma.t", body=b"x").data
                    for _ in range(batch)]
            await asyncio.gather(*(endpoint.open_async(_delivery(d, "af1.example.com"))
                                   for d in data))
    assert handoffs == [batch, batch]


async def test_small_batches_stay_on_the_loop() -> None:
    # open_executor_min_batch=4: a lone request (or three) is opened inline, where it waits for
    # no hand-off; four or more go to the thread as one batch. Verdicts are the same either way.
    sender, receiver, guard = _world()
    handoffs: list[int] = []

    class CountingPool(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            handoffs.append(len(args[0]))
            return super().submit(fn, *args, **kwargs)

    with CountingPool(max_workers=1) as pool:
        endpoint = SecureEndpoint(codec=receiver, guard=guard,
                                  publisher=Publisher(cast(Any, _NoBroker()), "network"),
                                  open_executor=pool, open_executor_min_batch=4)
        for batch in (1, 3, 4, 6):
            sealed = [sender.encode(recipient="network", msg_type="akma.t", body=bytes([i]))
                      for i in range(batch)]
            opened = await asyncio.gather(
                *(endpoint.open_async(_delivery(s.data, "af1.example.com")) for s in sealed))
            assert [o.msg_id for o in opened] == [s.msg_id for s in sealed]
    assert handoffs == [4, 6]
