"""The network worker's I/O shell: secure broker messages in, NEF/AAnF decisions, sealed replies
out.

All decisions are made by the pure ``Nef``; this module only decodes, dispatches, measures and
sends. A ``StoreError`` (our own storage failing) escapes the handler on purpose: it is our fault,
so the receive path releases the replay claim and requeues the request, bounded by the delivery
limit.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Histogram

from akma_contract.errors import REJECT_INVALID_REQUEST, ContractError
from akma_contract.messages import Rejected, decode_body
from akma_contract.topology import DEAD_LETTER_EXCHANGE, NETWORK_REQUEST_QUEUE, REPLY_EXCHANGE
from broker_adapter.envelope import OpenedMessage
from broker_adapter.runtime import SecureParty
from broker_adapter.secure import Reply, SecureResponder
from network_side.nef import Nef

log = logging.getLogger("network_side.service")

REQUESTS = Counter(
    "akma_network_requests_total",
    "Requests handled by the network worker, by request type and answer type.",
    ["request", "answer"],
)
LATENCY = Histogram(
    "akma_network_request_seconds",
    "Time to decide one request (decode, NEF/AAnF, encode), by request type.",
    ["request"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
NOTIFICATIONS = Counter(
    "akma_network_notifications_total",
    "Context-removed notifications sent to AFs, by outcome.",
    ["outcome"],
)


class NetworkService:
    def __init__(
        self,
        party: SecureParty,
        nef: Nef,
        *,
        queue: str = NETWORK_REQUEST_QUEUE,
        reply_exchange: str = REPLY_EXCHANGE,
        prefetch: int = 64,
    ) -> None:
        self._party = party
        self._nef = nef
        self._reply_exchange = reply_exchange
        self._responder = SecureResponder(
            party.endpoint, party.connection, queue, self.handle,
            reply_exchange=reply_exchange, dead_letter_exchange=DEAD_LETTER_EXCHANGE,
            prefetch=prefetch,
        )

    async def start(self) -> None:
        await self._responder.start()

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        await self._responder.stop(drain_timeout_s=drain_timeout_s)

    async def handle(self, opened: OpenedMessage) -> Reply:
        started = time.perf_counter()
        try:
            message = decode_body(opened.msg_type, opened.body)
        except ContractError as exc:
            # A well-sealed message from a trusted party that is not a valid request: answer
            # "invalid request" (the sender deserves an answer) and keep the detail in our log.
            log.warning("invalid request body", extra={"sender": opened.sender, "reason": exc.code})
            REQUESTS.labels(request="invalid", answer=Rejected.MSG_TYPE).inc()
            rejected = Rejected(reason=REJECT_INVALID_REQUEST)
            return Reply(rejected.MSG_TYPE, rejected.to_body())
        result = self._nef.handle(opened.sender, message)
        for af_identity, notification in result.notifications:
            await self._notify(af_identity, notification.MSG_TYPE, notification.to_body())
        REQUESTS.labels(request=opened.msg_type, answer=result.reply.MSG_TYPE).inc()
        LATENCY.labels(request=opened.msg_type).observe(time.perf_counter() - started)
        return Reply(result.reply.MSG_TYPE, result.reply.to_body())

    async def _notify(self, af_identity: str, msg_type: str, body: bytes) -> None:
        # Best effort by design: a lost notification only delays the AF's cache drop until the
        # K_AF expiry, which never outlives the context anyway.
        try:
            await self._party.endpoint.send(
                self._reply_exchange, af_identity, af_identity, msg_type, body
            )
            NOTIFICATIONS.labels(outcome="sent").inc()
        except Exception as exc:  # noqa: BLE001 - a notification never fails the request
            NOTIFICATIONS.labels(outcome="failed").inc()
            log.warning("notification to %s failed: %r", af_identity, exc)
