"""In-process AKMA deployment over the session's real TLS broker, for integration tests.

Each party is built exactly as its worker builds it (``open_secure_party``), with its own
replay store file; only the process boundary is left out so tests can look inside.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY as METRICS

from akma_contract import topology
from akma_contract.identifiers import UA_TLS13_SHARED_KEY, make_af_id
from akma_contract.messages import AkmaKeyInfo, AnchorKeyRegistered, CtxRemove, decode_body
from akma_contract.topology import inbox_queue
from as_side.service import AfService
from bench.plain_rpc import each
from broker_adapter.clock import system_clock_ms
from broker_adapter.runtime import SecureParty, SecuritySettings, open_secure_party
from broker_adapter.secure import SecureRequester
from broker_adapter.transport import Consumer, Delivery
from broker_adapter.verdict import Ack, Outcome
from infra.pki import PkiLayout
from network_side.aanf import AanfConfig
from network_side.af_registry import AfRegistry
from network_side.context_store import SqliteContextStore
from network_side.node import NetworkNode, start_network_node
from tests.integration.support import Management, party_settings

REPO = Path(__file__).resolve().parents[2]
REGISTRY = REPO / "infra" / "af-registry.example.toml"


def security_for(pki: PkiLayout, name: str, workdir: Path, **overrides: Any) -> SecuritySettings:
    values: dict[str, Any] = {
        "key_dir": pki.party_dir(name),
        "trust_dir": pki.root,
        "replay_sqlite_path": workdir / f"replay-{name}.sqlite3",
    }
    values.update(overrides)
    return SecuritySettings(**values)


async def open_party(
    broker: Any, pki: PkiLayout, name: str, workdir: Path, **sec: Any
) -> SecureParty:
    return await open_secure_party(
        party_settings(broker, pki, name), security_for(pki, name, workdir, **sec)
    )


@asynccontextmanager
async def network(
    broker: Any,
    pki: PkiLayout,
    workdir: Path,
    *,
    clock: Callable[[], int] = system_clock_ms,
    config: AanfConfig | None = None,
    registry: AfRegistry | None = None,
    master_key: bytes | None = None,
    **security: Any,
) -> AsyncIterator[NetworkNode]:
    """The network worker as ``python -m network_side`` assembles it (``start_network_node``)."""
    # Pass the same ``master_key`` to bring a network back over the same context database.
    store = SqliteContextStore(
        workdir / "contexts.sqlite3", master_key=master_key or os.urandom(32)
    )
    net = await start_network_node(
        party_settings(broker, pki, pki.network),
        security_for(pki, pki.network, workdir, **security),
        store=store,
        registry=registry or AfRegistry.load(REGISTRY),
        clock=clock,
        aanf_config=config,
        # Tests that move a clock purge when they choose, not every minute of real time.
        purge_interval_s=None,
    )
    try:
        yield net
    finally:
        await net.close(drain_timeout_s=2)


@asynccontextmanager
async def af(
    broker: Any, pki: PkiLayout, name: str, workdir: Path, *, af_fqdn: str | None = None,
    timeout_s: float = 5.0, attempts: int = 3, **security: Any,
) -> AsyncIterator[AfService]:
    party = await open_party(broker, pki, name, workdir, **security)
    service = AfService.build(
        party,
        af_id=make_af_id(af_fqdn or name, UA_TLS13_SHARED_KEY),
        timeout_s=timeout_s,
        attempts=attempts,
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await party.close()


@asynccontextmanager
async def ausf(broker: Any, pki: PkiLayout, workdir: Path) -> AsyncIterator[Ausf]:
    party = await open_party(broker, pki, "ausf", workdir)
    requester = SecureRequester(
        party.endpoint, party.connection, inbox_queue("ausf"),
        request_exchange=topology.REQUEST_EXCHANGE,
        dead_letter_exchange=topology.DEAD_LETTER_EXCHANGE)
    await requester.start()
    try:
        yield Ausf(requester, pki.network)
    finally:
        await requester.stop()
        await party.close()


@dataclass
class Ausf:
    requester: SecureRequester
    network: str

    async def register(self, info: AkmaKeyInfo) -> Any:
        answer = await self.requester.request(
            self.network, self.network, info.MSG_TYPE, info.to_body(), timeout_s=5
        )
        return decode_body(answer.msg_type, answer.body)

    async def remove(self, supi: str) -> Any:
        msg = CtxRemove(supi=supi)
        answer = await self.requester.request(
            self.network, self.network, msg.MSG_TYPE, msg.to_body(), timeout_s=5
        )
        return decode_body(answer.msg_type, answer.body)


# ---- helpers for the failure and operation tests (additive) -------------------------------------

VHOST = "akma"
REQUEST_QUEUE = topology.NETWORK_REQUEST_QUEUE
DEAD_LETTER_QUEUE = topology.DEAD_LETTER_QUEUE


class ShiftedClock:
    """The system clock plus an offset the test moves forward, so expiry is tested without
    sleeping. Only the AAnF/NEF get it; the envelope layer keeps the real clock, so messages
    still pass the timestamp check."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return system_clock_ms() + self.offset_ms

    def advance(self, ms: int) -> None:
        self.offset_ms += ms


def metric_total(name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of every sample of counter ``name`` (``_total``) whose labels include ``labels``."""
    want = labels or {}
    total = 0.0
    for family in METRICS.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in want.items()):
                total += sample.value
    return total


async def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 5.0, interval_s: float = 0.05
) -> None:
    """Poll ``predicate`` until it holds; fail the test with a timeout otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)


def management(broker: Any, pki: PkiLayout) -> Management | None:
    """The operator's management client, or None when the broker endpoint has no API."""
    if broker.management_url is None:
        return None
    return Management(broker.management_url, pki.admin_password(), str(pki.ca_cert))


def purge(mgmt: Management | None, *queues: str) -> None:
    """Empty work queues the shared session broker may still hold from earlier tests."""
    if mgmt is not None:
        for queue in queues:
            mgmt.purge(VHOST, queue)


async def dead_letter_with(
    mgmt: Management, message_id: str, *, timeout_s: float = 15.0
) -> dict[str, Any]:
    """Take dead letters off ``akma.dead-letters`` until the one with ``message_id`` appears."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    others = 0
    while asyncio.get_running_loop().time() < deadline:
        for item in await asyncio.to_thread(mgmt.get_messages, VHOST, DEAD_LETTER_QUEUE):
            if item["properties"].get("message_id") == message_id:
                return item
            others += 1
        await asyncio.sleep(0.3)
    raise AssertionError(f"{message_id} not dead-lettered within {timeout_s} s ({others} others)")


class InboxRecorder:
    """A raw consumer on a party's inbox that records every delivery before ``on_delivery``
    (default: ack) decides. Used where a test must see the wire, e.g. a re-sent answer."""

    def __init__(
        self,
        party: SecureParty,
        queue: str,
        on_delivery: Callable[[Delivery], Awaitable[Outcome]] | None = None,
    ) -> None:
        self.deliveries: list[Delivery] = []
        self._on_delivery = on_delivery
        self._consumer = Consumer(party.connection, queue, each(self._handle),
                                  publisher=party.publisher,
                                  dead_letter_exchange=topology.DEAD_LETTER_EXCHANGE)

    async def _handle(self, delivery: Delivery) -> Outcome:
        self.deliveries.append(delivery)
        if self._on_delivery is None:
            return Ack()
        return await self._on_delivery(delivery)

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop(drain_timeout_s=2)


__all__ = [
    "AnchorKeyRegistered",
    "Ausf",
    "InboxRecorder",
    "NetworkNode",
    "ShiftedClock",
    "af",
    "ausf",
    "dead_letter_with",
    "management",
    "metric_total",
    "network",
    "open_party",
    "purge",
    "wait_until",
]
