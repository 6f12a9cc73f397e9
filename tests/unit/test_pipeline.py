"""The one receive path (``pipeline.SecureReceiver``) without a broker: real envelopes, a real
replay store, a publisher that records. Each message's outcome is its own, whatever its
neighbours in the batch do."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from broker_adapter import pipeline
from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope import OpenedMessage
from broker_adapter.errors import PublishNackedError
from broker_adapter.replay import ClaimRequest, ReplayGuard, ReplayStore, ReplayStoreError
from broker_adapter.replay_stores import MemoryReplayStore, SqliteReplayStore
from broker_adapter.secure import SecureEndpoint, SecureRequester
from broker_adapter.transport import Delivery, OutgoingMessage, Publisher
from broker_adapter.turns import EnvelopeWorker
from broker_adapter.verdict import Ack, DeadLetter, Reply, Requeue
from tests.unit.envelope_helpers import POLICY, Party, TestPki, counter_rng, fixed_clock

AFS = ("af1.example.com", "af2.example.com", "af3.example.com")


def delivery(body: bytes, user_id: str, queue: str = "network.requests") -> Delivery:
    return Delivery(
        body=body, queue=queue, message_id=None, correlation_id=None, msg_type=None,
        reply_to=None, user_id=user_id, redelivered=False, delivery_count=0, exchange=None,
        routing_key=None,
    )


class RecordingPublisher:
    """What the endpoint publishes, by routing key; ``fail`` makes publishes to a key fail."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.sent: list[tuple[str, str, OutgoingMessage]] = []
        self.fail: set[str] = set()

    async def publish(self, exchange: str, routing_key: str, message: OutgoingMessage,
                      *, mandatory: bool = True) -> None:
        if routing_key in self.fail:
            raise PublishNackedError(routing_key)
        self.sent.append((exchange, routing_key, message))

    def to(self, key: str) -> list[OutgoingMessage]:
        return [m for _, k, m in self.sent if k == key]


class World:
    """The network and three AFs; the network's trust lacks af2's encryption certificate."""

    def __init__(self, *, store: ReplayStore | None = None, thread: bool = False,
                 af2_can_receive: bool = False) -> None:
        ca = TestPki()
        self.parties = {name: ca.party(name) for name in ("network", *AFS)}
        network = self.parties["network"]
        af2 = self.parties["af2.example.com"]
        everyone = ca.trust(self.parties.values())
        known = [p for n, p in self.parties.items() if n != "af2.example.com" or af2_can_receive]
        trust = ca.trust(known, extra=[] if af2_can_receive else [af2.sign_cert])
        self.clock = fixed_clock()
        self.senders = {name: self._codec(self.parties[name], everyone, i * 1000)
                        for i, name in enumerate(AFS, start=1)}
        self.store = store if store is not None else MemoryReplayStore()
        self.guard = ReplayGuard(self.store, window_ms=60_000, skew_ms=5_000,
                                 in_progress_lease_ms=5_000, clock=self.clock)
        self.publisher = RecordingPublisher("network")
        self.endpoint = SecureEndpoint(
            codec=self._codec(network, trust, 90_000), guard=self.guard,
            publisher=cast(Publisher, self.publisher), worker=EnvelopeWorker(use_thread=thread))
        self.handled: list[bytes] = []
        self.fail_bodies: set[bytes] = set()
        self.receiver = pipeline.SecureReceiver(self.endpoint, self.handle,
                                                reply_exchange="replies")

    def _codec(self, party: Party, trust: Any, rng_start: int) -> EnvelopeCodec:
        return EnvelopeCodec(identity=party.identity, trust=trust, policy=POLICY,
                             clock=self.clock, rng=counter_rng(rng_start))

    async def handle(self, opened: OpenedMessage) -> Reply:
        self.handled.append(opened.body)
        if opened.body in self.fail_bodies:
            raise RuntimeError("handler bug")
        return Reply("akma.answer", b"answer:" + opened.body)

    def seal(self, sender: str, body: bytes) -> Delivery:
        data = self.senders[sender].encode(recipient="network", msg_type="akma.t", body=body).data
        return delivery(data, sender)

    def close(self) -> None:
        self.endpoint.worker.close()
        self.store.close()


def _stores(tmp_path: Path) -> list[tuple[str, ReplayStore, bool]]:
    return [("memory", MemoryReplayStore(), False),
            ("sqlite-thread", SqliteReplayStore(tmp_path / "r.db"), True)]


@pytest.mark.parametrize("variant", ["memory", "sqlite-thread"])
async def test_one_reply_that_cannot_be_sealed_fails_only_its_own_message(
    variant: str, tmp_path: Path
) -> None:
    store, thread = {name: (s, t) for name, s, t in _stores(tmp_path)}[variant]
    world = World(store=store, thread=thread)
    batch = [world.seal(af, af.encode()) for af in AFS]
    outcomes = await world.receiver(batch)
    assert outcomes[0] == Ack() and outcomes[2] == Ack()
    assert isinstance(outcomes[1], DeadLetter) and outcomes[1].code == "no_recipient_key"
    assert sorted(world.handled) == sorted(af.encode() for af in AFS)
    assert len(world.publisher.to("af1.example.com")) == 1
    assert len(world.publisher.to("af3.example.com")) == 1
    assert world.publisher.to("af2.example.com") == []
    # af2's claim was recorded as done without an answer: its retries of the same bytes are
    # harmless duplicates, not a second run of the handler.
    world.handled.clear()
    again = await world.receiver([batch[0], batch[1], batch[2]])
    assert world.handled == []
    assert again == [Ack(), Ack(), Ack()]
    assert world.publisher.to("af2.example.com") == []
    world.close()


async def test_each_delivery_gets_the_verdict_it_would_get_alone(tmp_path: Path) -> None:
    for _, store, thread in _stores(tmp_path):
        world = World(store=store, thread=thread, af2_can_receive=True)
        earlier = world.seal(AFS[0], b"earlier")
        assert await world.receiver([earlier]) == [Ack()]
        fresh = [world.seal(AFS[0], bytes([i])) for i in range(3)]
        tampered = bytearray(fresh[1].body)
        tampered[-1] ^= 1
        # The sender's own random source again: its first message id is that of ``earlier``.
        twin = EnvelopeCodec(identity=world.parties[AFS[0]].identity,
                             trust=world.senders[AFS[0]].trust, policy=POLICY,
                             clock=world.clock, rng=counter_rng(1000))
        conflict = delivery(twin.encode(recipient="network", msg_type="akma.t",
                                        body=b"other bytes").data, AFS[0])
        batch = [
            fresh[0],
            delivery(bytes(tampered), AFS[0]),
            delivery(fresh[2].body, AFS[1]),  # not the signer's broker login
            earlier,
            conflict,
            fresh[2],
            fresh[0],  # the same bytes again in the same batch
            delivery(fresh[2].body, ""),  # no broker-validated user id
        ]
        outcomes = await world.receiver(batch)
        codes = [o.code if isinstance(o, DeadLetter) else o for o in outcomes]
        assert codes == [Ack(), "decryption_failed", "identity_mismatch", Ack(),
                         "replay_conflict", Ack(), Ack(), "missing_user_id"]
        # ``earlier`` was answered again from the cache; fresh[0]'s twin waited, then acked.
        assert world.handled == [b"earlier", b"\x00", b"\x02"]
        assert len(world.publisher.to(AFS[0])) == 5
        world.close()


async def test_a_handler_bug_requeues_only_its_message_and_frees_its_claim() -> None:
    world = World(af2_can_receive=True)
    world.fail_bodies = {b"b"}
    batch = [world.seal(AFS[0], b"a"), world.seal(AFS[1], b"b"), world.seal(AFS[2], b"c")]
    before = _local_faults("network.requests", "internal_error")
    outcomes = await world.receiver(batch)
    assert outcomes[0] == outcomes[2] == Ack()
    assert isinstance(outcomes[1], Requeue) and "handler bug" in outcomes[1].detail
    assert _local_faults("network.requests", "internal_error") == before + 1
    world.fail_bodies.clear()
    assert await world.receiver([batch[1]]) == [Ack()]
    assert world.handled == [b"a", b"b", b"c", b"b"]
    world.close()


async def test_a_reply_that_cannot_be_published_is_requeued_then_resent_from_the_cache() -> None:
    world = World(af2_can_receive=True)
    world.publisher.fail = {AFS[1]}
    batch = [world.seal(AFS[0], b"a"), world.seal(AFS[1], b"b")]
    outcomes = await world.receiver(batch)
    assert outcomes[0] == Ack()
    assert isinstance(outcomes[1], Requeue) and "publish_nacked" in outcomes[1].detail
    world.publisher.fail.clear()
    assert await world.receiver([batch[1]]) == [Ack()]
    resent = world.publisher.to(AFS[1])
    assert len(resent) == 1 and resent[0].msg_type == "resent"
    assert world.handled == [b"a", b"b"]
    world.close()


class _DownStore(MemoryReplayStore):
    def claim_many(self, items: Any, now_ms: int) -> Any:
        raise ReplayStoreError("store down")


async def test_a_store_that_is_down_requeues_after_the_bounded_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "MAX_CLAIM_WAIT_S", 0.3)
    world = World(store=_DownStore(), af2_can_receive=True)
    outcomes = await world.receiver([world.seal(AFS[0], b"a"), world.seal(AFS[1], b"b")])
    assert all(isinstance(o, Requeue) and "replay_store_unavailable" in o.detail
               for o in outcomes)
    assert world.handled == []
    world.close()


async def test_a_cancelled_batch_frees_the_claims_it_holds() -> None:
    world = World(af2_can_receive=True)
    entered = asyncio.Event()

    async def stuck(opened: OpenedMessage) -> Reply:
        entered.set()
        await asyncio.sleep(60)
        raise AssertionError

    receiver = pipeline.SecureReceiver(world.endpoint, stuck, reply_exchange="replies")
    request = world.seal(AFS[0], b"a")
    task = asyncio.ensure_future(receiver([request]))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Freed, not left to its lease: the redelivery is processed at once.
    assert await world.receiver([request]) == [Ack()]
    assert world.handled == [b"a"]
    world.close()


async def test_the_requester_inbox_routes_answers_and_notifications_each_on_its_own() -> None:
    world = World(af2_can_receive=True)
    af = world.parties[AFS[0]]
    notified: list[bytes] = []

    async def on_notification(opened: OpenedMessage) -> None:
        notified.append(opened.body)

    af_endpoint = SecureEndpoint(
        codec=world._codec(af, world.senders[AFS[0]].trust, 50_000), guard=world.guard,
        publisher=cast(Publisher, RecordingPublisher(AFS[0])))
    requester = SecureRequester(af_endpoint, cast(Any, None), "af.inbox",
                                request_exchange="requests", dead_letter_exchange="dlx",
                                on_notification=on_notification)
    network = world.endpoint.codec
    waiting = asyncio.ensure_future(requester.request("network", "network", "akma.t", b"q",
                                                      timeout_s=5))
    await asyncio.sleep(0.01)
    request_id = bytes.fromhex(cast(RecordingPublisher, af_endpoint.publisher).sent[0][2]
                               .message_id)

    def from_network(body: bytes, correlation_id: bytes | None = None) -> Delivery:
        data = network.encode(recipient=AFS[0], msg_type="akma.n", body=body,
                              correlation_id=correlation_id).data
        return delivery(data, "network", queue="af.inbox")

    inbox = requester._consumer._handler  # the receiver the consumer would call
    notification = from_network(b"context removed")
    outcomes = await inbox([
        from_network(b"answer", request_id),
        from_network(b"late", bytes(16)),
        notification,
        notification,
    ])
    assert outcomes == [Ack(), Ack(), Ack(), Ack()]
    assert (await waiting).body == b"answer"
    assert notified == [b"context removed"]
    world.close()


def _local_faults(queue: str, code: str) -> float:
    value = REGISTRY.get_sample_value("akma_secure_local_faults_total",
                                      {"queue": queue, "code": code})
    return value or 0.0


async def test_a_bug_while_one_message_waits_fails_only_that_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "MAX_CLAIM_WAIT_S", 1.0)
    world = World(af2_can_receive=True)
    mine, held = world.seal(AFS[0], b"mine"), world.seal(AFS[1], b"held")
    other = world.endpoint.open(held)  # another worker holds this one
    world.guard.claim([ClaimRequest(other.sender, other.msg_id, other.digest, other.timestamp_ms)])
    claim_many = world.store.claim_many
    calls = 0

    def broken_after_first(items: Any, now_ms: int) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("store driver bug")
        return claim_many(items, now_ms)

    monkeypatch.setattr(world.store, "claim_many", broken_after_first)
    outcomes = await world.receiver([mine, held])
    assert outcomes[0] == Ack()
    assert isinstance(outcomes[1], Requeue) and "store driver bug" in outcomes[1].detail
    monkeypatch.setattr(world.store, "claim_many", claim_many)
    # The neighbour's claim was completed, not abandoned: its redelivery is a duplicate.
    assert await world.receiver([mine]) == [Ack()]
    assert world.handled == [b"mine"]
    world.close()


async def test_a_batch_cancelled_on_the_envelope_thread_leaves_no_claim_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "MAX_CLAIM_WAIT_S", 0.3)
    world = World(thread=True, af2_can_receive=True)
    opening = world.endpoint.open

    def slow_open(delivery: Delivery) -> OpenedMessage:
        time.sleep(0.05)
        return opening(delivery)

    monkeypatch.setattr(world.endpoint, "open", slow_open)
    batch = [world.seal(AFS[i % 3], bytes([i])) for i in range(6)]
    task = asyncio.ensure_future(world.receiver(batch))
    await asyncio.sleep(0.1)  # the thread is opening and claiming the batch now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.setattr(world.endpoint, "open", opening)
    # Every claim the thread made was released: the redeliveries are processed at once.
    assert await world.receiver(batch) == [Ack()] * 6
    assert sorted(world.handled) == [bytes([i]) for i in range(6)]
    world.close()
