"""Part 4: one against two network worker processes on the one request queue.

The AF side is kept as cheap as possible so that it measures the workers: requests are sealed
before the clock starts, published through a plain confirmed channel, and answers are counted
(acked, not opened) by a plain consumer on the AF's inbox. Throughput = requests / (last answer
- first publish).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from akma_contract.identifiers import UA_TLS13_SHARED_KEY, make_af_id
from akma_contract.messages import AkmaAfKeyRequest
from bench.akma_env import AkmaFixture, NetworkWorkers, purge_queues
from bench.common import AF, AF_INBOX, NETWORK, REQUEST_EXCHANGE, REQUEST_QUEUE, Deployment
from broker_adapter.runtime import SecureParty, open_secure_party


@dataclass(frozen=True)
class ScalingConfig:
    requests: int
    rounds: int
    window: int = 128


async def _drive(party: SecureParty, akma: AkmaFixture, cfg: ScalingConfig) -> float:
    af_id = make_af_id(AF, UA_TLS13_SHARED_KEY)
    sealed = []
    for i in range(cfg.requests):
        body = AkmaAfKeyRequest(af_id=af_id, a_kid=akma.a_kids[i % len(akma.a_kids)]).to_body()
        sealed.append(party.endpoint.seal_now(NETWORK, AkmaAfKeyRequest.MSG_TYPE, body))
    channel = await party.connection.channel(publisher_confirms=True)
    inbox_channel = await party.connection.channel(publisher_confirms=False)
    await inbox_channel.set_qos(prefetch_count=512)
    inbox = await inbox_channel.declare_queue(AF_INBOX, passive=True)
    done = asyncio.Event()
    seen = [0, 0.0]

    async def on_answer(message: AbstractIncomingMessage) -> None:
        await message.ack()
        seen[0] += 1
        if seen[0] >= cfg.requests:
            seen[1] = time.time()
            done.set()

    tag = await inbox.consume(on_answer, no_ack=False)
    exchange = await channel.get_exchange(REQUEST_EXCHANGE, ensure=False)
    position = [0]

    async def lane() -> None:
        while position[0] < len(sealed):
            data, msg_id = sealed[position[0]]
            position[0] += 1
            await exchange.publish(
                aio_pika.Message(body=data, message_id=msg_id.hex(), user_id=AF,
                                 type=AkmaAfKeyRequest.MSG_TYPE,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=NETWORK, mandatory=True,
            )

    started = time.time()
    await asyncio.gather(*(lane() for _ in range(cfg.window)))
    await asyncio.wait_for(done.wait(), timeout=max(120.0, cfg.requests / 20))
    await inbox.cancel(tag)
    await channel.close()
    await inbox_channel.close()
    return cfg.requests / (float(seen[1]) - started)


async def run_scaling(dep: Deployment, akma: AkmaFixture, cfg: ScalingConfig,
                      log: Any = print) -> dict[str, Any]:
    party = await open_secure_party(dep.broker_settings(AF), dep.security_settings(AF))
    runs: dict[int, list[float]] = {1: [], 2: []}
    try:
        for round_ in range(cfg.rounds):
            for count in ([1, 2] if round_ % 2 == 0 else [2, 1]):
                purge_queues(dep, REQUEST_QUEUE, AF_INBOX)
                workers = NetworkWorkers(dep, akma, count, f"scale-{count}-{round_}")
                try:
                    workers.wait_ready()
                    rate = await _drive(party, akma, cfg)
                finally:
                    workers.stop()
                runs[count].append(rate)
                log(f"  scaling {count} worker(s) round {round_ + 1}: {rate:.0f} req/s")
    finally:
        await party.close()
    one, two = statistics.median(runs[1]), statistics.median(runs[2])
    return {
        "requests": cfg.requests,
        "rounds": cfg.rounds,
        "one_worker_req_per_s": one,
        "two_workers_req_per_s": two,
        "runs": {str(k): [round(v, 1) for v in vs] for k, vs in runs.items()},
        "worker_scaling": two / one,
    }
