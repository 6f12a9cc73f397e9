"""Child processes of the benchmark: ``python -m bench.roles <role> <json config>``.

Roles:
- ``tp-producer``: publishes ``count`` messages with a window of in-flight confirms.
- ``tp-consumer``: consumes ``count`` messages with manual acks, then reports.
- ``plain-responder``: answers every request on the network queue with a same-size plain body
  (the unsecured counterpart of the network worker for the latency comparison).
- ``plain-akma-responder``: the network worker's AKMA work over plain request/response (no
  envelope, no replay guard), to split the AKMA logic's cost from the security's.

Modes of the throughput roles:
- ``plain``: stock aio-pika only (the baseline: what messaging costs without us; our
  ``connect(..., coalesce_writes=False)``, so aiormq's own transport);
- ``plain_signed``: ``plain`` plus one ECDSA P-256 signature per message on the producer and its
  verification on the consumer, nothing else: the floor that a signature on every message
  alone puts under any secured path on this machine;
- ``transport``: our ``Publisher``/``Consumer`` with plain bodies over our connection (our
  shell with its coalesced writes, no security);
- ``transport_signed``: ``transport`` plus the one signature and verification of
  ``plain_signed``: the per-message-signature floor on our own shell;
- ``secured``: ``SecureEndpoint.seal`` + ``Publisher`` on one side, a ``Consumer`` with the
  receive path (``pipeline.SecureReceiver``: open, checks 1-7, replay claim and completion, a
  loop turn's deliveries together) on the other, as the network worker consumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from akma_contract.messages import decode_body
from bench.common import (
    DEAD_LETTERS,
    NETWORK,
    REPLY_EXCHANGE,
    REQUEST_EXCHANGE,
    REQUEST_QUEUE,
    emit,
)
from bench.plain_rpc import each
from broker_adapter.clock import system_clock_ms
from broker_adapter.envelope import OpenedMessage
from broker_adapter.pipeline import SecureReceiver
from broker_adapter.runtime import SecuritySettings, open_secure_party
from broker_adapter.transport import (
    BrokerSettings,
    Consumer,
    Delivery,
    OutgoingMessage,
    Publisher,
    connect,
)
from broker_adapter.verdict import Ack, Outcome
from broker_adapter.worker import configure_logging, run_worker
from network_side.aanf import Aanf, AanfConfig
from network_side.af_registry import AfRegistry
from network_side.audit import AuditLog
from network_side.context_store import SqliteContextStore
from network_side.nef import Nef
from network_side.settings import read_master_key

BENCH_MSG_TYPE = "akma.bench"

# A fixed P-256 key for the ``plain_signed`` floor variant only (both child processes derive it;
# it signs nothing but bench bodies). ECDSA with random nonces, as a plain signer would use.
_FLOOR_KEY = ec.derive_private_key(0x5EC0_4E5F_100D, ec.SECP256R1())
_ECDSA = ec.ECDSA(hashes.SHA256())


def _settings(config: dict[str, Any]) -> tuple[BrokerSettings, SecuritySettings]:
    party = config["party"]
    return BrokerSettings(**party["broker"]), SecuritySettings(**party["security"])


def _chunks_per_write(connection: object) -> float | None:
    """Frames (aiormq chunks) per socket write on a coalescing connection; None on stock."""
    stats = getattr(connection, "write_stats", None)
    if stats is None or not stats.writes:
        return None
    return float(stats.chunks / stats.writes)


async def _connect_stock(broker: BrokerSettings) -> AbstractRobustConnection:
    """The baseline is stock aio-pika: TLS and certificate login as ours, but aiormq's own
    transport (one socket write per frame), not our coalescing writer."""
    return await connect(broker, coalesce_writes=False)


class _Windowed:
    """Run ``send(i)`` for i in range(count) with at most ``window`` calls in flight."""

    def __init__(self, count: int, window: int, send: Callable[[int], Awaitable[None]]) -> None:
        self._count, self._window, self._send = count, window, send
        self._next = 0

    async def _lane(self) -> None:
        while self._next < self._count:
            i = self._next
            self._next += 1
            await self._send(i)

    async def run(self) -> None:
        await asyncio.gather(*(self._lane() for _ in range(min(self._window, self._count))))


async def producer(config: dict[str, Any]) -> None:
    broker, security = _settings(config)
    mode, count, window = config["mode"], int(config["count"]), int(config["window"])
    body = os.urandom(int(config["body_bytes"]))
    send: Callable[[int], Awaitable[None]]
    closers: list[Callable[[], Awaitable[None]]] = []
    connection: object
    if mode in ("plain", "plain_signed"):
        connection = await _connect_stock(broker)
        closers.append(connection.close)
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(REQUEST_EXCHANGE, ensure=False)
        signed = mode == "plain_signed"

        async def send(i: int) -> None:
            payload = body + _FLOOR_KEY.sign(body, _ECDSA) if signed else body
            await exchange.publish(
                aio_pika.Message(
                    body=payload,
                    message_id=secrets.token_hex(16),
                    user_id=broker.identity,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=NETWORK,
                mandatory=True,
            )

    elif mode in ("transport", "transport_signed"):
        connection = await connect(broker)
        closers.append(connection.close)
        publisher = Publisher(connection, broker.identity)
        closers.insert(0, publisher.close)
        signed = mode == "transport_signed"

        async def send(i: int) -> None:
            payload = body + _FLOOR_KEY.sign(body, _ECDSA) if signed else body
            await publisher.publish(
                REQUEST_EXCHANGE,
                NETWORK,
                OutgoingMessage(body=payload, message_id=secrets.token_hex(16),
                                msg_type=BENCH_MSG_TYPE),
            )

    else:
        party = await open_secure_party(broker, security)
        closers.append(party.close)
        connection = party.connection
        endpoint = party.endpoint

        async def send(i: int) -> None:
            data, msg_id = endpoint.seal_now(NETWORK, BENCH_MSG_TYPE, body)
            await endpoint.publish_sealed(
                REQUEST_EXCHANGE, NETWORK, data, msg_id, msg_type=BENCH_MSG_TYPE
            )

    await send(-1)  # warm-up: channel, exchange, trust verdicts, epoch key
    emit("ready")
    cpu0, start = time.process_time(), time.time()
    await _Windowed(count, window, send).run()
    end = time.time()
    emit("result", start_ts=start, end_ts=end, cpu_s=time.process_time() - cpu0, count=count,
         chunks_per_write=_chunks_per_write(connection))
    for close in closers:
        await close()


class _Counter:
    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.rejected = 0
        self.first_ts = 0.0
        self.last_ts = 0.0
        self.cpu0 = 0.0
        self.loop_cpu0 = 0.0
        self.loop_cpu_s = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        now = time.time()
        if self.seen == 0:
            self.first_ts = now
            self.cpu0 = time.process_time()
            # Called on the event loop's thread: its own CPU, apart from the envelope thread's.
            self.loop_cpu0 = time.thread_time()
        self.seen += 1
        if self.seen >= self.count:
            self.last_ts = now
            self.loop_cpu_s = time.thread_time() - self.loop_cpu0
            self.done.set()


_Closers = list[Callable[[], Awaitable[None]]]


async def consumer(config: dict[str, Any]) -> None:
    broker, security = _settings(config)
    mode = config["mode"]
    # The producer's warm-up message comes first, so one more than ``count`` arrives.
    counter = _Counter(int(config["count"]) + 1)
    closers: _Closers = []
    connection: object
    if mode in ("plain", "plain_signed"):
        connection = await _consume_stock(config, broker, counter, closers)
    elif mode in ("transport", "transport_signed"):
        connection = await _consume_transport(config, broker, counter, closers)
    else:
        connection = await _consume_secured(config, (broker, security), counter, closers)
    emit("ready")
    await counter.done.wait()
    emit(
        "result",
        first_ts=counter.first_ts,
        last_ts=counter.last_ts,
        count=counter.seen,
        rejected=counter.rejected,
        cpu_s=time.process_time() - counter.cpu0,
        loop_cpu_s=counter.loop_cpu_s,
        chunks_per_write=_chunks_per_write(connection),
    )
    for close in closers:
        await close()


async def _consume_stock(config: dict[str, Any], broker: BrokerSettings, counter: _Counter,
                         closers: _Closers) -> AbstractRobustConnection:
    """Stock aio-pika, verifying the floor's signature in ``plain_signed``."""
    connection = await _connect_stock(broker)
    closers.append(connection.close)
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=int(config["prefetch"]))
    queue = await channel.declare_queue(REQUEST_QUEUE, passive=True)
    verify = config["mode"] == "plain_signed"
    public = _FLOOR_KEY.public_key()
    body_len = int(config["body_bytes"])

    async def on_message(message: AbstractIncomingMessage) -> None:
        if verify:
            data = message.body
            # Body, then the DER signature over it.
            public.verify(data[body_len:], data[:body_len], _ECDSA)
        await message.ack()
        counter.hit()

    await queue.consume(on_message, no_ack=False)
    return connection


async def _consume_transport(config: dict[str, Any], broker: BrokerSettings, counter: _Counter,
                             closers: _Closers) -> AbstractRobustConnection:
    """Our ``Consumer`` over our connection, plain bodies (signed in ``transport_signed``)."""
    connection = await connect(broker)
    publisher = Publisher(connection, broker.identity)
    closers += [publisher.close, connection.close]
    verify = config["mode"] == "transport_signed"
    public = _FLOOR_KEY.public_key()
    body_len = int(config["body_bytes"])

    async def handler(delivery: Delivery) -> Outcome:
        if verify:
            data = delivery.body
            public.verify(data[body_len:], data[:body_len], _ECDSA)
        counter.hit()
        return Ack()

    cons = Consumer(connection, REQUEST_QUEUE, each(handler), publisher=publisher,
                    dead_letter_exchange=DEAD_LETTERS, prefetch=int(config["prefetch"]))
    await cons.start()
    closers.insert(0, cons.stop)
    return connection


async def _consume_secured(config: dict[str, Any],
                           settings: tuple[BrokerSettings, SecuritySettings],
                           counter: _Counter, closers: _Closers) -> AbstractRobustConnection:
    """The secured path: the receive path of the network worker with a handler that accepts."""
    party = await open_secure_party(*settings)
    connection, publisher = party.connection, party.publisher
    closers.append(party.close)

    def count(outcome: Outcome) -> Outcome:
        if isinstance(outcome, Ack):
            counter.hit()
        else:
            counter.rejected += 1
            sys.stderr.write(f"not acked: {outcome!r}\n")
        return outcome

    async def accept(opened: OpenedMessage) -> None:
        return None

    receiver = SecureReceiver(party.endpoint, accept)

    async def batch_handler(deliveries: Sequence[Delivery]) -> list[Outcome]:
        return [count(outcome) for outcome in await receiver(deliveries)]

    cons = Consumer(connection, REQUEST_QUEUE, batch_handler, publisher=publisher,
                    dead_letter_exchange=DEAD_LETTERS, prefetch=int(config["prefetch"]))
    await cons.start()
    closers.insert(0, cons.stop)
    return connection


async def plain_responder(config: dict[str, Any]) -> None:
    """Answer each request with ``reply_bytes`` of plain body, addressed by ``user_id``."""
    broker, _ = _settings(config)
    reply = os.urandom(int(config["reply_bytes"]))
    connection: AbstractRobustConnection = await connect(broker)
    publisher = Publisher(connection, broker.identity)

    async def handler(delivery: Delivery) -> Outcome:
        await publisher.publish(
            REPLY_EXCHANGE,
            delivery.user_id or "",
            OutgoingMessage(
                body=reply,
                message_id=secrets.token_hex(16),
                correlation_id=delivery.correlation_id,
                msg_type="bench.reply",
            ),
        )
        return Ack()

    cons = Consumer(
        connection, REQUEST_QUEUE, each(handler), publisher=publisher,
        dead_letter_exchange=DEAD_LETTERS, prefetch=int(config["prefetch"]),
    )
    await cons.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    emit("ready")
    await stop.wait()
    await cons.stop(drain_timeout_s=2)
    await publisher.close()
    await connection.close()


async def stock_responder(config: dict[str, Any]) -> None:
    """``plain_responder`` written with stock aio-pika as a plain application would (its
    consumer callbacks and ``Exchange.publish`` with confirms, asyncio's loop): the latency
    baseline that matches the throughput part's "plain"."""
    broker, _ = _settings(config)
    reply = os.urandom(int(config["reply_bytes"]))
    connection = await _connect_stock(broker)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=int(config["prefetch"]))
    queue = await channel.declare_queue(REQUEST_QUEUE, passive=True)
    replies = await channel.get_exchange(REPLY_EXCHANGE, ensure=False)

    async def on_message(message: AbstractIncomingMessage) -> None:
        await replies.publish(
            aio_pika.Message(
                body=reply,
                message_id=secrets.token_hex(16),
                correlation_id=message.correlation_id,
                type="bench.reply",
                user_id=broker.identity,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=message.user_id or "",
            mandatory=True,
        )
        await message.ack()

    await queue.consume(on_message, no_ack=False)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    emit("ready")
    await stop.wait()
    await connection.close()


async def plain_akma_responder(config: dict[str, Any]) -> None:
    """The network worker's AKMA work (NEF + AAnF on the same context store and registry, audit
    lines included) behind plain request/response: no envelope, no replay guard. Separates
    what the AKMA logic costs from what the security costs."""
    broker, _ = _settings(config)
    configure_logging("INFO")
    store = SqliteContextStore(
        Path(config["context_db"]), master_key=read_master_key(Path(config["master_key_file"]))
    )
    audit = AuditLog(system_clock_ms)
    aanf = Aanf(store, system_clock_ms, AanfConfig(), audit=audit)
    nef = Nef(AfRegistry.load(Path(config["registry"])), aanf, system_clock_ms, audit=audit)
    connection: AbstractRobustConnection = await connect(broker)
    publisher = Publisher(connection, broker.identity)

    async def handler(delivery: Delivery) -> Outcome:
        message = decode_body(delivery.msg_type or "", delivery.body)
        reply = nef.handle(delivery.user_id or "", message).reply
        await publisher.publish(
            REPLY_EXCHANGE,
            delivery.user_id or "",
            OutgoingMessage(
                body=reply.to_body(),
                message_id=secrets.token_hex(16),
                correlation_id=delivery.correlation_id,
                msg_type=reply.MSG_TYPE,
            ),
        )
        return Ack()

    cons = Consumer(
        connection, REQUEST_QUEUE, each(handler), publisher=publisher,
        dead_letter_exchange=DEAD_LETTERS, prefetch=int(config["prefetch"]),
    )
    await cons.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    emit("ready")
    await stop.wait()
    await cons.stop(drain_timeout_s=2)
    await publisher.close()
    await connection.close()
    store.close()


ROLES: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, None]]] = {
    "tp-producer": producer,
    "tp-consumer": consumer,
    "plain-responder": plain_responder,
    "stock-responder": stock_responder,
    "plain-akma-responder": plain_akma_responder,
}


def main(argv: list[str]) -> int:
    role, config = argv[0], json.loads(argv[1])
    # Stock aio-pika runs on asyncio's own loop, as a plain aio-pika application would; our
    # parties run on the loop our workers choose (``run_worker``: uvloop where installed).
    stock = config.get("mode") in ("plain", "plain_signed") or role == "stock-responder"
    run_worker(ROLES[role](config), "asyncio" if stock else config.get("event_loop", "auto"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
