"""The AF worker: a secure requester on the AF's inbox, the key client, and the Ua* stand-in."""

from __future__ import annotations

from dataclasses import dataclass

from akma_contract.topology import (
    DEAD_LETTER_EXCHANGE,
    NETWORK_IDENTITY,
    REQUEST_EXCHANGE,
    inbox_queue,
)
from as_side.client import AkmaKeyClient
from as_side.ua_server import UaServer
from broker_adapter.clock import system_clock_ms
from broker_adapter.envelope import OpenedMessage
from broker_adapter.runtime import SecureParty
from broker_adapter.secure import SecureRequester


@dataclass
class AfService:
    party: SecureParty
    requester: SecureRequester
    client: AkmaKeyClient
    ua: UaServer | None

    @classmethod
    def build(
        cls,
        party: SecureParty,
        *,
        af_id: bytes,
        network: str = NETWORK_IDENTITY,
        timeout_s: float = 5.0,
        attempts: int = 3,
        ua_port: int | None = None,
        reveal_keys: bool = False,
    ) -> AfService:
        holder: dict[str, AkmaKeyClient] = {}

        async def on_notification(opened: OpenedMessage) -> None:
            await holder["client"].on_notification(opened)

        requester = SecureRequester(
            party.endpoint,
            party.connection,
            inbox_queue(party.endpoint.identity),
            request_exchange=REQUEST_EXCHANGE,
            dead_letter_exchange=DEAD_LETTER_EXCHANGE,
            on_notification=on_notification,
        )
        client = AkmaKeyClient(
            requester,
            af_id=af_id,
            clock_ms=system_clock_ms,
            network=network,
            timeout_s=timeout_s,
            attempts=attempts,
        )
        holder["client"] = client
        ua = None
        if ua_port is not None:
            ua = UaServer(client, port=ua_port, reveal_keys=reveal_keys)
        return cls(party, requester, client, ua)

    async def start(self) -> None:
        await self.requester.start()
        if self.ua is not None:
            await self.ua.start()

    async def stop(self) -> None:
        if self.ua is not None:
            await self.ua.stop()
        await self.requester.stop()
