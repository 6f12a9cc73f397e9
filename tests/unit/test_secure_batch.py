"""``SecureEndpoint.guarded_batch``: a batch of deliveries gets, message by message, the verdicts
that ``guarded`` gives each one alone, with one open batch, one claim round and one completion
round; and ``outcome_for_error``, the rule both paths share for a handling that raised."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest

from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope import OpenedMessage
from broker_adapter.errors import BrokerConfigError, PublishTimeoutError
from broker_adapter.replay import (
    Claim,
    ClaimOutcome,
    ClaimRequest,
    ReplayGuard,
    ReplayStore,
    ReplayStoreError,
)
from broker_adapter.replay_stores import MemoryReplayStore, SqliteReplayStore
from broker_adapter.secure import SecureEndpoint
from broker_adapter.transport import Ack, DeadLetter, Outcome, Publisher, Requeue
from broker_adapter.transport.delivery import outcome_for_error
from tests.unit.envelope_helpers import POLICY, TestPki, counter_rng, fixed_clock
from tests.unit.test_secure_open_batch import _delivery

AF = "af1.example.com"


class _NoBroker:
    """Nothing here publishes; the publisher only lends its identity."""


class _World:
    def __init__(self, *, executor: ThreadPoolExecutor | None = None,
                 store: ReplayStore | None = None) -> None:
        ca = TestPki()
        network, af = ca.party("network"), ca.party(AF)
        trust = ca.trust([network, af])
        clock = fixed_clock()
        self.sender = EnvelopeCodec(identity=af.identity, trust=trust, policy=POLICY,
                                    clock=clock, rng=counter_rng(1))
        # The same random source as ``sender``: its first message id repeats the sender's
        # first, over other bytes (a conflict).
        self.twin = EnvelopeCodec(identity=af.identity, trust=trust, policy=POLICY,
                                  clock=clock, rng=counter_rng(1))
        receiver = EnvelopeCodec(identity=network.identity, trust=trust, policy=POLICY,
                                 clock=clock, rng=counter_rng(1000))
        self.store = store if store is not None else MemoryReplayStore()
        self.guard = ReplayGuard(self.store, window_ms=60_000, skew_ms=5_000,
                                 in_progress_lease_ms=5_000, clock=clock)
        self.endpoint = SecureEndpoint(
            codec=receiver, guard=self.guard,
            publisher=Publisher(cast(Any, _NoBroker()), "network"),
            open_executor=executor, open_executor_min_batch=2)
        self.processed: list[bytes] = []
        self.duplicates: list[bytes] = []

    def seal(self, body: bytes, codec: EnvelopeCodec | None = None) -> bytes:
        return (codec or self.sender).encode(recipient="network", msg_type="akma.t",
                                             body=body).data

    async def process(self, items: list[tuple[OpenedMessage, Claim]]) -> list[Outcome]:
        self.processed += [opened.body for opened, _ in items]
        await self.guard.complete_many([(claim, b"answer:" + o.body) for o, claim in items])
        return [Ack() for _ in items]

    async def on_duplicate(self, opened: OpenedMessage, claim: Claim) -> None:
        assert claim.cached_response == b"answer:" + opened.body
        self.duplicates.append(opened.body)


@pytest.mark.parametrize(("threaded", "store"), [
    (False, "memory"),
    (True, "memory"),
    # Claimed on the envelope thread right after the opens.
    (True, "sqlite"),
])
async def test_each_delivery_gets_the_verdict_it_would_get_alone(
    threaded: bool, store: str, tmp_path: Path
) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        world = _World(executor=pool if threaded else None,
                       store=SqliteReplayStore(tmp_path / "r.db") if store == "sqlite" else None)
        first = world.seal(b"first")  # the twin's first message reuses this id
        earlier = world.seal(b"earlier")
        # ``earlier`` was handled before this batch: its redelivery is a finished duplicate.
        assert await world.endpoint.guarded_batch([_delivery(earlier, AF)], world.process) == [
            Ack()]
        fresh = [world.seal(bytes([i])) for i in range(3)]
        tampered = bytearray(world.seal(b"tampered"))
        tampered[-1] ^= 1
        batch = [
            _delivery(first, AF),
            _delivery(fresh[0], AF),
            _delivery(bytes(tampered), AF),
            _delivery(fresh[1], "af2.example.com"),  # not the signer's broker login
            _delivery(earlier, AF),
            _delivery(world.seal(b"conflict", world.twin), AF),
            _delivery(fresh[2], AF),
            _delivery(fresh[0], AF),  # the same bytes again in the same batch
        ]
        outcomes = await world.endpoint.guarded_batch(batch, world.process, world.on_duplicate)
    assert outcomes[0] == outcomes[1] == outcomes[6] == Ack()
    assert isinstance(outcomes[2], DeadLetter) and outcomes[2].code == "decryption_failed"
    assert isinstance(outcomes[3], DeadLetter) and outcomes[3].code == "identity_mismatch"
    assert outcomes[4] == Ack()  # finished duplicate: acked, not processed again
    assert isinstance(outcomes[5], DeadLetter) and outcomes[5].code == "replay_conflict"
    # The copy of fresh[0] met its twin's live claim, waited for it, then found it finished.
    assert outcomes[7] == Ack()
    assert world.processed == [b"earlier", b"first", b"\x00", b"\x02"]
    assert sorted(world.duplicates) == [b"\x00", b"earlier"]
    await world.store.close()


class _RecordingSqliteStore(SqliteReplayStore):
    """Records which thread made each claim round."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.rounds: list[tuple[str, int]] = []

    def claim_many_sync(self, items: Any, now_ms: int) -> Any:
        self.rounds.append((threading.current_thread().name, len(items)))
        return super().claim_many_sync(items, now_ms)

    async def claim_many(self, items: Any, now_ms: int) -> Any:
        self.rounds.append((threading.current_thread().name, len(items)))
        return await super().claim_many(items, now_ms)


@pytest.mark.parametrize("claim_on_open_thread", [True, False])
async def test_a_batch_opened_on_the_envelope_thread_is_claimed_there(
    claim_on_open_thread: bool, tmp_path: Path
) -> None:
    store = _RecordingSqliteStore(tmp_path / "r.db")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="envelope-open") as pool:
        world = _World(executor=pool, store=store)
        world.endpoint = SecureEndpoint(
            codec=world.endpoint.codec, guard=world.guard, publisher=world.endpoint.publisher,
            open_executor=pool, open_executor_min_batch=2,
            claim_on_open_thread=claim_on_open_thread)
        batch = [_delivery(world.seal(bytes([i])), AF) for i in range(4)]
        assert await world.endpoint.guarded_batch(batch, world.process) == [Ack()] * 4
        # Below the executor's minimum batch, opens and claims stay on the loop.
        lone = [_delivery(world.seal(b"lone"), AF)]
        assert await world.endpoint.guarded_batch(lone, world.process) == [Ack()]
    loop_thread = threading.current_thread().name
    first = "envelope-open_0" if claim_on_open_thread else loop_thread
    assert store.rounds == [(first, 4), (loop_thread, 1)]
    assert world.processed == [b"\x00", b"\x01", b"\x02", b"\x03", b"lone"]
    await store.close()


async def test_a_failed_claim_round_on_the_envelope_thread_takes_the_waiting_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The round failed as a whole (the store was busy past its timeout): each message then
    # retries alone with the bounded wait, as when the loop's round fails.
    store = SqliteReplayStore(tmp_path / "r.db")
    failures = iter([True])

    def flaky(items: Any, now_ms: int) -> Any:
        if next(failures, False):
            raise ReplayStoreError("busy")
        raise AssertionError("the retry goes through claim")

    monkeypatch.setattr(store, "claim_many_sync", flaky)
    with ThreadPoolExecutor(max_workers=1) as pool:
        world = _World(executor=pool, store=store)
        batch = [_delivery(world.seal(bytes([i])), AF) for i in range(3)]
        assert await world.endpoint.guarded_batch(batch, world.process) == [Ack()] * 3
    assert sorted(world.processed) == [b"\x00", b"\x01", b"\x02"]
    await store.close()


async def test_a_failing_process_frees_every_claim_for_the_redelivery() -> None:
    world = _World()
    data = [world.seal(bytes([i])) for i in range(3)]

    async def broken(items: list[tuple[OpenedMessage, Claim]]) -> list[Outcome]:
        raise RuntimeError("handler bug")

    outcomes = await world.endpoint.guarded_batch([_delivery(d, AF) for d in data], broken)
    assert all(isinstance(o, Requeue) and "RuntimeError" in o.detail for o in outcomes)
    # Nothing is remembered as in progress: the redelivery processes every message.
    assert await world.endpoint.guarded_batch([_delivery(d, AF) for d in data],
                                              world.process) == [Ack()] * 3
    assert world.processed == [b"\x00", b"\x01", b"\x02"]


async def test_a_store_that_is_down_requeues_after_the_bounded_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = _World()

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise ReplayStoreError("down")

    monkeypatch.setattr(world.store, "claim_many", down)
    monkeypatch.setattr(world.store, "claim", down)
    monkeypatch.setattr("broker_adapter.secure._MAX_STORE_WAIT_S", 0.0)
    outcomes = await world.endpoint.guarded_batch([_delivery(world.seal(b"x"), AF)],
                                                  world.process)
    assert isinstance(outcomes[0], Requeue) and "replay store unavailable" in outcomes[0].detail
    assert world.processed == []


async def test_claim_many_keeps_an_order_the_batch_relies_on() -> None:
    # guarded_batch pairs answers with requests by position.
    world = _World()
    opened = [world.endpoint.open(_delivery(world.seal(bytes([i])), AF)) for i in range(5)]
    claims = await world.guard.claim_many(
        [ClaimRequest(o.sender, o.msg_id, o.digest, o.timestamp_ms) for o in opened])
    assert [c.msg_id for c in claims if isinstance(c, Claim)] == [o.msg_id for o in opened]
    assert all(isinstance(c, Claim) and c.outcome is ClaimOutcome.PROCESS for c in claims)


def test_outcome_for_error() -> None:
    assert outcome_for_error(ReplayStoreError("down")) == Requeue("replay_store_unavailable: down")
    assert isinstance(outcome_for_error(PublishTimeoutError("slow")), Requeue)
    refused = outcome_for_error(BrokerConfigError("no key"))
    assert refused == DeadLetter("broker_config", "no key")
    assert outcome_for_error(KeyError("x")) == Requeue("handler error: KeyError")


async def test_open_many_joins_the_envelope_thread_queue() -> None:
    # Batches submitted while the thread is busy go together into its next hand-off.
    world_pool = ThreadPoolExecutor(max_workers=1)
    handoffs: list[int] = []
    original = world_pool.submit

    def counting(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        handoffs.append(len(args[0]))
        return original(fn, *args, **kwargs)

    world_pool.submit = counting  # type: ignore[method-assign]
    try:
        world = _World(executor=world_pool)
        batches = [[_delivery(world.seal(bytes([b, i])), AF) for i in range(3)] for b in range(3)]
        results = await asyncio.gather(*(world.endpoint.open_many(b) for b in batches))
    finally:
        world_pool.shutdown()
    assert [len(r) for r in results] == [3, 3, 3]
    assert all(not isinstance(o, Exception) for r in results for o in r)
    assert handoffs == [9]


async def test_the_requester_inbox_batch_routes_each_answer_on_its_own() -> None:
    # The AF's inbox consumes in batch mode: one open batch, then every delivery its own
    # verdict: the awaited answer wakes its caller, a repeat is dropped, a tampered one and an
    # answer from a party that was never asked are refused, a notification reaches its handler.
    from broker_adapter.secure import SecureRequester, _Pending

    world = _World()
    network = world.endpoint.codec  # seals as "network"
    af_endpoint = SecureEndpoint(
        codec=world.sender, guard=world.guard,
        publisher=Publisher(cast(Any, _NoBroker()), AF))
    notified: list[bytes] = []

    async def on_notification(opened: OpenedMessage) -> None:
        notified.append(opened.body)

    requester = SecureRequester(af_endpoint, cast(Any, _NoBroker()), "af.inbox",
                                on_notification=on_notification)
    request_id, other_id = b"\x01" * 16, b"\x02" * 16
    waiting = asyncio.get_running_loop().create_future()
    requester._pending[request_id] = _Pending(waiting, "network")
    requester._pending[other_id] = _Pending(asyncio.get_running_loop().create_future(), "nef2")

    def answer(body: bytes, correlation_id: bytes | None) -> bytes:
        return network.encode(recipient=AF, msg_type="akma.t", body=body,
                              correlation_id=correlation_id).data

    tampered = bytearray(answer(b"forged", request_id))
    tampered[-1] ^= 1
    batch = [
        _delivery(bytes(tampered), "network"),
        _delivery(answer(b"the answer", request_id), "network"),
        _delivery(answer(b"again", request_id), "network"),
        _delivery(answer(b"not asked", other_id), "network"),
        _delivery(answer(b"context removed", None), "network"),
    ]
    outcomes = await requester._on_inbox_batch(batch)
    assert isinstance(outcomes[0], DeadLetter) and outcomes[0].code == "decryption_failed"
    assert outcomes[1] == outcomes[2] == Ack()
    assert isinstance(outcomes[3], DeadLetter) and outcomes[3].code == "unexpected_responder"
    assert outcomes[4] == Ack()
    assert waiting.result().body == b"the answer"
    assert notified == [b"context removed"]


async def test_finished_duplicates_of_a_batch_are_answered_side_by_side() -> None:
    # on_duplicate may publish a cached answer and wait for its confirm: a replay flood must not
    # make a batch wait for them one after the other. Each call here returns only once all three
    # are under way, which never happens if they run in sequence.
    world = _World()
    data = [world.seal(bytes([i])) for i in range(3)]
    assert await world.endpoint.guarded_batch([_delivery(d, AF) for d in data],
                                              world.process) == [Ack()] * 3
    active, all_in = 0, asyncio.Event()

    async def slow_resend(opened: OpenedMessage, claim: Claim) -> None:
        nonlocal active
        active += 1
        if active == 3:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 5)

    outcomes = await world.endpoint.guarded_batch([_delivery(d, AF) for d in data],
                                                  world.process, slow_resend)
    assert outcomes == [Ack()] * 3 and active == 3
    assert world.processed == [b"\x00", b"\x01", b"\x02"]  # processed once, then duplicates
