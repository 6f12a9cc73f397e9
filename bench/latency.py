"""Part 2: K_AF request latency, the full AKMA request against a plain request/response.

Secured: the AF's ``AkmaKeyClient`` (cache disabled, so every call goes to the network) in this
process, the real network worker in another. Plain: ``RpcClient`` here and a plain responder
process answering with a body of the same size as the sealed answer, over the same queues.
Plain AKMA (reported, not a target): ``RpcClient`` and the network worker's NEF/AAnF work over
plain request/response, which splits the AKMA logic's cost from the security's. Stock (reported,
not a target): the same echo written with stock aio-pika on asyncio's loop at both ends, the
baseline the throughput part calls "plain"; ``rpc_p99_ratio`` keeps the stricter echo on our own
transport.
Concurrent callers never ask for the same A-KID at the same time (no single-flight sharing).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Self

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from akma_contract import topology
from akma_contract.identifiers import UA_TLS13_SHARED_KEY, make_af_id
from akma_contract.messages import AkmaAfKeyData, AkmaAfKeyRequest, decode_body
from as_side.client import AkmaKeyClient
from bench.akma_env import AkmaFixture, NetworkWorkers, purge_queues
from bench.common import (
    AF,
    AF_INBOX,
    NETWORK,
    REQUEST_EXCHANGE,
    REQUEST_QUEUE,
    BenchError,
    Child,
    Deployment,
)
from bench.plain_rpc import RpcClient
from broker_adapter.clock import system_clock_ms
from broker_adapter.runtime import open_secure_party
from broker_adapter.secure import SecureRequester
from broker_adapter.transport import Publisher, connect

Call = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class LatencyConfig:
    rounds: int
    # Requests per concurrency level (split evenly between the callers).
    requests: dict[int, int]
    warmup: int = 20


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50_ms": q[49], "p99_ms": q[98], "mean_ms": statistics.fmean(ms), "n": len(ms)}


CpuProbe = Callable[[], dict[str, float]]


def _cpu_probe(dep: Deployment, responders: list[Child]) -> CpuProbe:
    """CPU seconds so far of the caller (this process), the responder process(es), the broker."""

    def probe() -> dict[str, float]:
        return {
            "caller": time.process_time(),
            "responder": sum(child.cpu_s() for child in responders),
            "broker": dep.broker_cpu_s() or 0.0,
        }

    return probe


async def _measure(call: Call, concurrency: int, total: int,
                   cpu: CpuProbe) -> dict[str, float]:
    per_lane = max(1, total // concurrency)
    samples: list[float] = []

    async def lane(i: int) -> None:
        for j in range(per_lane):
            started = time.perf_counter()
            await call(j * concurrency + i)
            samples.append(time.perf_counter() - started)

    cpu0 = cpu()
    started = time.perf_counter()
    await asyncio.gather(*(lane(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu1 = cpu()
    out = _percentiles(samples)
    out["req_per_s"] = len(samples) / elapsed
    # Where each request's CPU went: on 2 shared cores this, not the envelope alone, sets
    # the latency under load.
    for part in cpu0:
        out[f"{part}_cpu_us_per_req"] = (cpu1[part] - cpu0[part]) / len(samples) * 1e6
    return out


async def _secured_phase(dep: Deployment, akma: AkmaFixture, cfg: LatencyConfig,
                         label: str) -> dict[int, dict[str, float]]:
    workers = NetworkWorkers(dep, akma, 1, f"lat-net-{label}")
    try:
        workers.wait_ready()
        party = await open_secure_party(
            dep.broker_settings(AF),
            dep.security_settings(AF, replay_store="sqlite",
                                  replay_sqlite_path=str(dep.work / f"lat-af-{label}.sqlite3")),
        )
        requester = SecureRequester(
            party.endpoint, party.connection, AF_INBOX,
            request_exchange=topology.REQUEST_EXCHANGE,
            dead_letter_exchange=topology.DEAD_LETTER_EXCHANGE)
        # max_cached=0: every call is a network request, as the brief asks (cache disabled).
        client = AkmaKeyClient(requester, af_id=make_af_id(AF, UA_TLS13_SHARED_KEY),
                               clock_ms=system_clock_ms, max_cached=0)
        await requester.start()
        a_kids = akma.a_kids

        async def call(i: int) -> None:
            await client.get_application_key(a_kids[i % len(a_kids)])

        try:
            for i in range(cfg.warmup):
                await call(i)
            probe = _cpu_probe(dep, workers.children)
            return {c: await _measure(call, c, n, probe) for c, n in cfg.requests.items()}
        finally:
            await requester.stop()
            await party.close()
    finally:
        workers.stop()


async def _rpc_phase(dep: Deployment, cfg: LatencyConfig, responder: Child,
                     make_call: Callable[[RpcClient], Call]) -> dict[int, dict[str, float]]:
    """Drive a plain responder process with ``RpcClient`` calls from this process."""
    try:
        responder.event("ready")
        connection = await connect(dep.broker_settings(AF))
        publisher = Publisher(connection, AF)
        rpc = RpcClient(connection, publisher, AF_INBOX)
        await rpc.start()
        call = make_call(rpc)
        try:
            for i in range(cfg.warmup):
                await call(i)
            probe = _cpu_probe(dep, [responder])
            return {c: await _measure(call, c, n, probe) for c, n in cfg.requests.items()}
        finally:
            await rpc.stop()
            await publisher.close()
            await connection.close()
    finally:
        responder.stop()


def _echo_responder(dep: Deployment, role: str, label: str, sizes: dict[str, int]) -> Child:
    """A responder process answering every request with a body of the sealed answer's size."""
    return Child.role(
        label, role,
        {"reply_bytes": sizes["reply"], "prefetch": 64, "party": dep.party_config(NETWORK)},
        dep.work,
    )


async def _plain_phase(dep: Deployment, cfg: LatencyConfig, sizes: dict[str, int],
                       label: str) -> dict[int, dict[str, float]]:
    responder = _echo_responder(dep, "plain-responder", f"lat-plain-{label}", sizes)
    body = os.urandom(sizes["request"])

    def make_call(rpc: RpcClient) -> Call:
        async def call(i: int) -> None:
            await rpc.request(REQUEST_EXCHANGE, NETWORK, body, timeout_s=15,
                              msg_type=AkmaAfKeyRequest.MSG_TYPE)

        return call

    return await _rpc_phase(dep, cfg, responder, make_call)


class _StockRpc:
    """Request/response as a plain aio-pika application writes it: publish with confirms, an
    inbox consumer callback, answers matched by correlation id."""

    def __init__(self, dep: Deployment) -> None:
        self._dep = dep
        self._pending: dict[str, asyncio.Future[None]] = {}

    async def __aenter__(self) -> Self:
        broker = self._dep.broker_settings(AF)
        self._identity = broker.identity
        self._connection = await connect(broker, coalesce_writes=False)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.get_exchange(REQUEST_EXCHANGE, ensure=False)
        inbox = await channel.declare_queue(AF_INBOX, passive=True)
        await channel.set_qos(prefetch_count=128)
        await inbox.consume(self._on_answer, no_ack=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._connection.close()

    async def _on_answer(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(None)
        await message.ack()

    async def call(self, body: bytes) -> None:
        key = secrets.token_hex(16)
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            await self._exchange.publish(
                aio_pika.Message(body=body, message_id=key, correlation_id=key,
                                 type=AkmaAfKeyRequest.MSG_TYPE, user_id=self._identity,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT, expiration=15),
                routing_key=NETWORK, mandatory=True)
            await asyncio.wait_for(future, timeout=15)
        finally:
            self._pending.pop(key, None)


async def _stock_phase(dep: Deployment, cfg: LatencyConfig, sizes: dict[str, int],
                       label: str) -> dict[int, dict[str, float]]:
    responder = _echo_responder(dep, "stock-responder", f"lat-stock-{label}", sizes)
    body = os.urandom(sizes["request"])
    try:
        responder.event("ready")
        async with _StockRpc(dep) as rpc:
            for _ in range(cfg.warmup):
                await rpc.call(body)
            probe = _cpu_probe(dep, [responder])

            async def call(i: int) -> None:
                await rpc.call(body)

            return {c: await _measure(call, c, n, probe) for c, n in cfg.requests.items()}
    finally:
        responder.stop()


async def _plain_akma_phase(dep: Deployment, akma: AkmaFixture, cfg: LatencyConfig,
                            label: str) -> dict[int, dict[str, float]]:
    """The same AKMA request and answer (NEF/AAnF, context store, audit) without envelopes or
    replay guard: what the AKMA work costs apart from the security."""
    responder = Child.role(
        f"lat-plain-akma-{label}", "plain-akma-responder",
        {"prefetch": 64, "party": dep.party_config(NETWORK), "registry": str(akma.registry),
         "master_key_file": str(akma.master_key), "context_db": str(akma.context_db)},
        dep.work,
    )
    af_id = make_af_id(AF, UA_TLS13_SHARED_KEY)

    def make_call(rpc: RpcClient) -> Call:
        async def call(i: int) -> None:
            request = AkmaAfKeyRequest(af_id=af_id, a_kid=akma.a_kids[i % len(akma.a_kids)])
            answer = await rpc.request(REQUEST_EXCHANGE, NETWORK, request.to_body(), timeout_s=15,
                                       msg_type=request.MSG_TYPE)
            if not isinstance(decode_body(answer.msg_type or "", answer.body), AkmaAfKeyData):
                raise BenchError(f"plain AKMA answer was {answer.msg_type}")

        return call

    return await _rpc_phase(dep, cfg, responder, make_call)


async def envelope_sizes(dep: Deployment, akma: AkmaFixture) -> dict[str, int]:
    """Sizes of a sealed key request and of a sealed key answer, for the plain counterpart."""
    party = await open_secure_party(dep.broker_settings(AF), dep.security_settings(AF))
    try:
        request = AkmaAfKeyRequest(af_id=make_af_id(AF, UA_TLS13_SHARED_KEY), a_kid=akma.a_kids[0])
        req, _ = party.endpoint.seal_now(NETWORK, request.MSG_TYPE, request.to_body())
        answer = AkmaAfKeyData(k_af=os.urandom(32), expiry_ms=system_clock_ms() + 3_600_000,
                               supi="imsi-001010000000001")
        # Sealed by us to the network, the answer differs from the real one only by the length
        # of the two names, a few bytes.
        rep, _ = party.endpoint.seal_now(NETWORK, answer.MSG_TYPE, answer.to_body())
        return {"request": len(req), "reply": len(rep)}
    finally:
        await party.close()


async def run_latency(dep: Deployment, akma: AkmaFixture, cfg: LatencyConfig,
                      log: Any = print) -> dict[str, Any]:
    sizes = await envelope_sizes(dep, akma)
    modes = ["secured", "plain", "plain_akma", "stock"]
    runs: dict[str, list[dict[int, dict[str, float]]]] = {m: [] for m in modes}
    for round_ in range(cfg.rounds):
        shift = round_ % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            purge_queues(dep, REQUEST_QUEUE, AF_INBOX)
            label = f"{mode}-{round_}"
            if mode == "secured":
                result = await _secured_phase(dep, akma, cfg, label)
            elif mode == "plain_akma":
                result = await _plain_akma_phase(dep, akma, cfg, label)
            elif mode == "stock":
                result = await _stock_phase(dep, cfg, sizes, label)
            else:
                result = await _plain_phase(dep, cfg, sizes, label)
            runs[mode].append(result)
            log("  latency " + mode.ljust(8) + f" round {round_ + 1}: " + ", ".join(
                f"c={c} p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} ms" for c, r in result.items()))
    out: dict[str, Any] = {"sizes_bytes": sizes, "rounds": cfg.rounds, "levels": {}}
    for c in cfg.requests:
        level: dict[str, Any] = {}
        for mode, results in runs.items():
            level[mode] = {
                k: statistics.median(r[c][k] for r in results)
                for k in ("p50_ms", "p99_ms", "mean_ms", "req_per_s", "caller_cpu_us_per_req",
                          "responder_cpu_us_per_req", "broker_cpu_us_per_req")
            } | {"n": results[0][c]["n"]}
        level["p50_ratio"] = level["secured"]["p50_ms"] / level["plain"]["p50_ms"]
        level["p99_ratio"] = level["secured"]["p99_ms"] / level["plain"]["p99_ms"]
        # Reported, not a target: the security's share once the AKMA work is on both sides.
        level["p99_ratio_vs_plain_akma"] = (
            level["secured"]["p99_ms"] / level["plain_akma"]["p99_ms"]
        )
        # Reported, not a target: against the echo as stock aio-pika writes it.
        level["p99_ratio_vs_stock"] = level["secured"]["p99_ms"] / level["stock"]["p99_ms"]
        out["levels"][str(c)] = level
    return out
