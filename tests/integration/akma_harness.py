"""In-process AKMA deployment over the session's real TLS broker, for integration tests.

Each party is built exactly as its worker builds it (``open_secure_party``), with its own
replay store file; only the process boundary is left out so tests can look inside.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from as_side.service import AfService, inbox_queue
from broker_adapter.runtime import SecureParty, SecuritySettings, open_secure_party, system_clock_ms
from broker_adapter.secure import SecureRequester
from infra.pki import PkiLayout
from network_side.aanf import Aanf, AanfConfig
from network_side.af_registry import AfRegistry
from network_side.akma import UA_TLS13_SHARED_KEY, make_af_id
from network_side.context_store import SqliteContextStore
from network_side.messages import AkmaKeyInfo, AnchorKeyRegistered, CtxRemove, decode_body
from network_side.nef import Nef
from network_side.service import NetworkService
from tests.integration.support import party_settings

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


async def open_party(broker: Any, pki: PkiLayout, name: str, workdir: Path, **sec: Any) -> SecureParty:
    return await open_secure_party(
        party_settings(broker, pki, name), security_for(pki, name, workdir, **sec)
    )


@dataclass
class Network:
    party: SecureParty
    service: NetworkService
    aanf: Aanf
    store: SqliteContextStore

    async def close(self) -> None:
        await self.service.stop(drain_timeout_s=2)
        await self.party.close()
        self.store.close()


@asynccontextmanager
async def network(
    broker: Any,
    pki: PkiLayout,
    workdir: Path,
    *,
    clock: Callable[[], int] = system_clock_ms,
    config: AanfConfig | None = None,
    registry: AfRegistry | None = None,
) -> AsyncIterator[Network]:
    store = SqliteContextStore(workdir / "contexts.sqlite3", master_key=os.urandom(32))
    aanf = Aanf(store, clock, config or AanfConfig())
    nef = Nef(registry or AfRegistry.load(REGISTRY), aanf, clock)
    party = await open_party(broker, pki, pki.network, workdir)
    service = NetworkService(party, nef)
    await service.start()
    net = Network(party, service, aanf, store)
    try:
        yield net
    finally:
        await net.close()


@asynccontextmanager
async def af(
    broker: Any, pki: PkiLayout, name: str, workdir: Path, *, af_fqdn: str | None = None,
    timeout_s: float = 5.0, attempts: int = 3,
) -> AsyncIterator[AfService]:
    party = await open_party(broker, pki, name, workdir)
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
async def ausf(broker: Any, pki: PkiLayout, workdir: Path) -> AsyncIterator["Ausf"]:
    party = await open_party(broker, pki, "ausf", workdir)
    requester = SecureRequester(party.endpoint, party.connection, inbox_queue("ausf"))
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


__all__ = ["AnchorKeyRegistered", "Ausf", "Network", "af", "ausf", "network", "open_party"]
