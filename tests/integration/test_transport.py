"""The transport over the real TLS broker: confirms, dead letters with reasons, delivery limit,
request/response, and recovery after a broker restart."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aio_pika
import pytest

from akma_contract.topology import (
    DEAD_LETTER_QUEUE,
    NETWORK_REQUEST_QUEUE,
    NETWORK_ROUTING_KEY,
    REPLY_EXCHANGE,
    REQUEST_EXCHANGE,
    inbox_queue,
)
from bench.plain_rpc import RpcClient, each
from broker_adapter.errors import BrokerConfigError, PublishReturnedError
from broker_adapter.transport import (
    Consumer,
    Delivery,
    OutgoingMessage,
    Publisher,
    connect,
)
from broker_adapter.transport.connection import amqp_url
from broker_adapter.transport.consumer import BatchHandler
from broker_adapter.transport.raw_consume import RawConsumeChannel
from broker_adapter.transport.tls import client_ssl_context
from broker_adapter.verdict import Ack, DeadLetter, Outcome, Requeue
from reliability.proxy import TcpProxy
from tests.integration.support import DLX, Management, party_settings

pytestmark = pytest.mark.broker

AF = "af1.example.com"
NET = "network"
VHOST = "akma"


@pytest.fixture
def mgmt(broker: Any, pki: Any) -> Management:
    return Management(broker.management_url, pki.admin_password(), str(pki.ca_cert))


@pytest.fixture
async def clean_queues(mgmt: Management) -> None:
    # The session broker is shared; start every test from empty work queues.
    for queue in (NETWORK_REQUEST_QUEUE, inbox_queue(AF)):
        mgmt.purge(VHOST, queue)


class Party:
    def __init__(self, connection: Any, publisher: Publisher) -> None:
        self.connection = connection
        self.publisher = publisher
        self.consumers: list[Consumer] = []

    async def consume(
        self, queue: str, handler: Callable[[Delivery], Awaitable[Outcome]], **kw: Any
    ) -> Consumer:
        return await self.consume_batches(queue, each(handler), **kw)

    async def consume_batches(self, queue: str, handler: BatchHandler, **kw: Any) -> Consumer:
        consumer = Consumer(self.connection, queue, handler, publisher=self.publisher,
                            dead_letter_exchange=DLX, **kw)
        await consumer.start()
        self.consumers.append(consumer)
        return consumer

    async def close(self) -> None:
        for consumer in self.consumers:
            await consumer.stop(drain_timeout_s=2)
        await self.publisher.close()
        await self.connection.close()


@pytest.fixture
async def parties(broker: Any, pki: Any, clean_queues: None) -> AsyncIterator[dict[str, Party]]:
    made: dict[str, Party] = {}
    for name in (NET, AF):
        settings = party_settings(broker, pki, name)
        connection = await connect(settings)
        made[name] = Party(connection, Publisher(connection, name, confirm_timeout_s=5))
    yield made
    for party in made.values():
        await party.close()


def _msg(body: bytes = b"payload") -> OutgoingMessage:
    return OutgoingMessage(body=body, message_id=secrets.token_hex(16))


async def _dead_letters_with(
    mgmt: Management, message_id: str, timeout: float = 10
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    seen: list[dict[str, Any]] = []
    while asyncio.get_running_loop().time() < deadline:
        for item in mgmt.get_messages(VHOST, DEAD_LETTER_QUEUE):
            seen.append(item)
            if item["properties"].get("message_id") == message_id:
                return item
        await asyncio.sleep(0.3)
    raise AssertionError(f"{message_id} not dead-lettered; saw {len(seen)} others")


async def _wait_for_count(mgmt: Management, queue: str, expected: int, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    count = None
    while asyncio.get_running_loop().time() < deadline:
        count = mgmt.queue(VHOST, queue).get("messages")
        if count == expected:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{queue} holds {count} messages, expected {expected}")


async def test_handler_rejection_lands_in_dead_letters_with_reason(
    parties: dict[str, Party], mgmt: Management
) -> None:
    seen = asyncio.Event()

    async def refuse(delivery: Delivery) -> Outcome:
        seen.set()
        return DeadLetter("bad_signature", "signature did not verify")

    await parties[NET].consume(NETWORK_REQUEST_QUEUE, refuse)
    message = _msg(b"forged")
    await parties[AF].publisher.publish(REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, message)
    await asyncio.wait_for(seen.wait(), 10)

    item = await _dead_letters_with(mgmt, message.message_id)
    headers = item["properties"]["headers"]
    assert headers["x-akma-reason"] == "bad_signature"
    assert headers["x-akma-queue"] == NETWORK_REQUEST_QUEUE
    assert headers["x-akma-consumer"] == NET
    assert headers["x-akma-original-user-id"] == AF
    assert base64.b64decode(item["payload"]) == b"forged"
    # Nothing is left behind in the work queue (management stats lag by a few seconds).
    await _wait_for_count(mgmt, NETWORK_REQUEST_QUEUE, 0)


async def test_poison_message_is_dead_lettered_after_delivery_limit(
    parties: dict[str, Party], mgmt: Management
) -> None:
    attempts = 0
    done = asyncio.Event()

    async def always_fails(delivery: Delivery) -> Outcome:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("handler bug")

    async def count_only(delivery: Delivery) -> Outcome:
        done.set()
        return Ack()

    await parties[NET].consume(NETWORK_REQUEST_QUEUE, always_fails, requeue_backoff_s=0.01)
    poison = _msg(b"poison")
    await parties[AF].publisher.publish(REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, poison)

    item = await _dead_letters_with(mgmt, poison.message_id, timeout=30)
    deaths = item["properties"]["headers"]["x-death"]
    assert deaths[0]["reason"] == "delivery_limit"
    assert deaths[0]["queue"] == NETWORK_REQUEST_QUEUE
    # The policy allows 5 redeliveries: the first delivery plus five, then it stops.
    assert 2 <= attempts <= 6
    # The worker is still alive and serves the next message.
    assert not done.is_set()


async def test_transient_failure_is_retried_then_succeeds(parties: dict[str, Party]) -> None:
    calls: list[int] = []
    ok = asyncio.Event()

    async def flaky(delivery: Delivery) -> Outcome:
        calls.append(delivery.delivery_count)
        if len(calls) < 3:
            return Requeue("database busy")
        ok.set()
        return Ack()

    await parties[NET].consume(NETWORK_REQUEST_QUEUE, flaky, requeue_backoff_s=0.01)
    await parties[AF].publisher.publish(REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, _msg())
    await asyncio.wait_for(ok.wait(), 10)
    assert len(calls) == 3
    assert calls[-1] >= 2  # quorum queues count redeliveries in x-delivery-count


async def test_unroutable_publish_is_an_error(parties: dict[str, Party]) -> None:
    with pytest.raises(PublishReturnedError):
        await parties[AF].publisher.publish(REQUEST_EXCHANGE, "no-such-route", _msg())


async def test_request_response_is_routed_by_validated_user_id(parties: dict[str, Party]) -> None:
    async def respond(delivery: Delivery) -> Outcome:
        assert delivery.user_id == AF
        await parties[NET].publisher.publish(
            REPLY_EXCHANGE,
            delivery.user_id,
            OutgoingMessage(
                body=b"pong:" + delivery.body,
                message_id=secrets.token_hex(16),
                correlation_id=delivery.correlation_id,
            ),
        )
        return Ack()

    await parties[NET].consume(NETWORK_REQUEST_QUEUE, respond)
    client = RpcClient(parties[AF].connection, parties[AF].publisher, inbox_queue(AF))
    await client.start()
    try:
        answers = await asyncio.gather(
            *(client.request(REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, b"ping%d" % i, timeout_s=10)
              for i in range(20))
        )
        assert sorted(a.body for a in answers) == sorted(b"pong:ping%d" % i for i in range(20))
        assert all(a.user_id == NET for a in answers)
    finally:
        await client.stop()


async def test_recovers_after_broker_restart(
    parties: dict[str, Party], broker_node: Any
) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def record(delivery: Delivery) -> Outcome:
        await received.put(delivery.body)
        return Ack()

    await parties[NET].consume(NETWORK_REQUEST_QUEUE, record)
    await parties[AF].publisher.publish(REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, _msg(b"before"))
    assert await asyncio.wait_for(received.get(), 10) == b"before"

    await asyncio.to_thread(broker_node.restart)

    # Neither party is rebuilt: the robust connections and the consumer come back on their own.
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            await parties[AF].publisher.publish(
                REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, _msg(b"after")
            )
            break
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
    assert await asyncio.wait_for(received.get(), 30) == b"after"
    # The new socket got the coalescing writer and an unbounded write queue as well.
    underlay = parties[AF].connection.transport.connection
    assert underlay.write_queue.maxsize == 0
    assert parties[AF].connection.write_stats.writes > 0


async def test_concurrent_publishes_share_socket_writes_and_all_arrive_intact(
    parties: dict[str, Party],
) -> None:
    # Our connection joins the frames of one loop turn into one TLS write (transport/coalesce.py)
    # with aiormq's write queue unbounded; every publish must still be confirmed and arrive
    # exactly once with its own body.
    count = 300
    received: dict[str, bytes] = {}
    done = asyncio.Event()

    async def record(delivery: Delivery) -> Outcome:
        received[delivery.message_id or ""] = delivery.body
        if len(received) >= count:
            done.set()
        return Ack()

    await parties[NET].consume(NETWORK_REQUEST_QUEUE, record)
    af = parties[AF]
    stats = af.connection.write_stats
    chunks0, writes0 = stats.chunks, stats.writes
    messages = [_msg(b"body-%d-" % i + secrets.token_bytes(64)) for i in range(count)]
    await asyncio.gather(
        *(af.publisher.publish(REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, m) for m in messages)
    )
    await asyncio.wait_for(done.wait(), 30)
    assert received == {m.message_id: m.body for m in messages}
    chunks, writes = stats.chunks - chunks0, stats.writes - writes0
    assert chunks >= count
    # One write per frame without coalescing; measured about 50-80 frames per write here.
    assert writes * 5 < chunks, f"{chunks} frames took {writes} writes"


async def test_stock_connection_is_available_without_coalescing(broker: Any, pki: Any) -> None:
    connection = await connect(party_settings(broker, pki, AF), coalesce_writes=False)
    try:
        assert not hasattr(connection, "write_stats")
        publisher = Publisher(connection, AF, confirm_timeout_s=5)
        await publisher.publish(REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, _msg(b"stock"))
        await publisher.close()
    finally:
        await connection.close()


async def test_a_cut_link_does_not_cancel_a_handling_under_way(
    broker: Any, pki: Any, clean_queues: None
) -> None:
    # aiormq cancels consumer callbacks when their channel closes. A handling cancelled halfway
    # gives up its replay claim after its work is done, and the redelivery does the work again
    # (seen once in the link-fault soak). The consumer runs each handling in a task of its own:
    # it finishes; the broker redelivers the message, whose first ack died with the channel.
    proxy = TcpProxy([(broker.host, broker.port)])
    await proxy.start()
    net_conn = await connect(party_settings(broker, pki, NET, host=proxy.host, port=proxy.port))
    af_conn = await connect(party_settings(broker, pki, AF))
    af_pub = Publisher(af_conn, AF, confirm_timeout_s=5)
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []
    deliveries: list[bool] = []

    async def slow(delivery: Delivery) -> Outcome:
        deliveries.append(delivery.redelivered)
        if len(deliveries) == 1:
            started.set()
            await release.wait()  # the link is cut while we are here
            finished.append(True)
        return Ack()

    consumer = Consumer(net_conn, NETWORK_REQUEST_QUEUE, each(slow),
                        publisher=Publisher(net_conn, NET), dead_letter_exchange=DLX, prefetch=4)
    try:
        await consumer.start()
        await af_pub.publish(REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, _msg(b"under way"))
        await asyncio.wait_for(started.wait(), 10)
        assert proxy.cut() >= 1
        await asyncio.sleep(0.5)  # the client has seen the link go
        proxy.restore()
        release.set()
        deadline = asyncio.get_running_loop().time() + 30
        while len(deliveries) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        assert finished == [True], "the handling was cancelled by the cut"
        assert deliveries == [False, True]  # redelivered once: the first ack died with the link
    finally:
        await consumer.stop(drain_timeout_s=2)
        await af_pub.close()
        await af_conn.close()
        await net_conn.close()
        await proxy.close()


async def test_a_batch_handler_settles_each_delivery_by_its_own_outcome(
    parties: dict[str, Party], mgmt: Management
) -> None:
    # Deliveries of one loop turn reach the batch handler together; each outcome applies to
    # its own delivery: acked, dead-lettered with its reason, requeued.
    batches: list[list[bytes]] = []
    seen: dict[bytes, int] = {}
    all_done = asyncio.Event()

    async def decide(batch: Sequence[Delivery]) -> list[Outcome]:
        batches.append([d.body for d in batch])
        outcomes: list[Outcome] = []
        for delivery in batch:
            seen[delivery.body] = seen.get(delivery.body, 0) + 1
            if delivery.body.startswith(b"bad"):
                outcomes.append(DeadLetter("bad_signature", "batch verdict"))
            elif delivery.body.startswith(b"flaky") and seen[delivery.body] == 1:
                outcomes.append(Requeue("try again"))
            else:
                outcomes.append(Ack())
        if sum(seen.values()) >= 13:
            all_done.set()
        return outcomes

    bodies = [b"ok%d" % i for i in range(10)] + [b"bad", b"flaky"]
    messages = [_msg(body) for body in bodies]
    for message in messages:
        await parties[AF].publisher.publish(REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, message)
    # Published before consuming: the prefetched deliveries arrive in few socket reads.
    await parties[NET].consume_batches(NETWORK_REQUEST_QUEUE, decide, prefetch=32)
    await asyncio.wait_for(all_done.wait(), 15)
    assert any(len(b) > 1 for b in batches), batches
    assert seen[b"flaky"] == 2 and all(seen[b] == 1 for b in bodies if b != b"flaky")
    item = await _dead_letters_with(mgmt, messages[10].message_id)
    assert item["properties"]["headers"]["x-akma-reason"] == "bad_signature"
    await _wait_for_count(mgmt, NETWORK_REQUEST_QUEUE, 0)


async def test_a_failing_batch_handler_requeues_its_whole_batch(parties: dict[str, Party]) -> None:
    calls: list[int] = []
    redelivered = asyncio.Event()

    async def broken_once(batch: Sequence[Delivery]) -> list[Outcome]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("bug")
        if all(d.redelivered for d in batch):
            redelivered.set()
        return [Ack() for _ in batch]

    await parties[AF].publisher.publish(REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, _msg(b"once"))
    await parties[NET].consume_batches(NETWORK_REQUEST_QUEUE, broken_once)
    await asyncio.wait_for(redelivered.wait(), 10)


async def _one_delivery(connection: Any, publisher_party: Party, body: bytes) -> Delivery:
    """Consume ``network.requests`` on ``connection`` until the message with ``body`` arrives."""
    got: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()

    async def record(delivery: Delivery) -> Outcome:
        if delivery.body == body and not got.done():
            got.set_result(delivery)
        return Ack()

    consumer = Consumer(connection, NETWORK_REQUEST_QUEUE, each(record),
                        publisher=Publisher(connection, NET, confirm_timeout_s=5),
                        dead_letter_exchange=DLX)
    await consumer.start()
    try:
        await publisher_party.publisher.publish(
            REQUEST_EXCHANGE, NETWORK_ROUTING_KEY,
            OutgoingMessage(body=body, message_id=secrets.token_hex(16),
                            correlation_id=secrets.token_hex(16), msg_type="akma.test",
                            headers={"x-trace": "t1"}),
        )
        return await asyncio.wait_for(got, 10)
    finally:
        await consumer.stop(drain_timeout_s=2)


async def test_deliveries_straight_from_aiormq_carry_every_field(
    parties: dict[str, Party], mgmt: Management
) -> None:
    """Our connections hand deliveries over straight from aiormq (``raw_consume.py``): the
    handler sees every field aio-pika would have given it, and the delivery is acked."""
    assert parties[NET].connection.CHANNEL_CLASS is RawConsumeChannel
    d = await _one_delivery(parties[NET].connection, parties[AF], b"raw path")
    assert d.body == b"raw path" and d.queue == NETWORK_REQUEST_QUEUE
    assert d.user_id == AF and d.msg_type == "akma.test"
    assert d.exchange == REQUEST_EXCHANGE and d.routing_key == NETWORK_ROUTING_KEY
    assert d.headers.get("x-trace") == "t1" and d.redelivered is False
    assert d.message_id is not None and d.correlation_id is not None
    assert d.delivery_count == 0
    await _wait_for_count(mgmt, NETWORK_REQUEST_QUEUE, 0)


async def test_a_consumer_refuses_a_connection_that_is_not_ours(broker: Any, pki: Any) -> None:
    settings = party_settings(broker, pki, NET)
    foreign = await aio_pika.connect_robust(
        amqp_url(settings), ssl_context=client_ssl_context(
            settings.ca_file, settings.cert_file, settings.key_file))
    try:
        consumer = Consumer(foreign, NETWORK_REQUEST_QUEUE, each(_ack_all),
                            publisher=Publisher(foreign, NET, confirm_timeout_s=5),
                            dead_letter_exchange=DLX)
        with pytest.raises(BrokerConfigError, match="broker_adapter.transport.connect"):
            await consumer.start()
    finally:
        await foreign.close()


async def _ack_all(delivery: Delivery) -> Outcome:
    return Ack()
