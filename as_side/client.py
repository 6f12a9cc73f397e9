"""The AF's key client: ``get_application_key(a_kid)`` returns K_AF from the network.

- Cached until shortly before the key's expiry, and dropped when the network says the AKMA
  context is gone.
- One request in flight per (A-KID, variant): concurrent callers share it.
- Timeouts and bounded retries; retries resend the *same* sealed request, which the network's
  replay guard answers from its cache instead of deriving a key twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from akma_contract.errors import ContractError
from akma_contract.messages import (
    REPLY_TYPES,
    AkmaAfKeyData,
    AkmaAfKeyRequest,
    ContextRemovedNotification,
    KeyNotFound,
    Rejected,
    decode_body,
)
from akma_contract.topology import NETWORK_IDENTITY, NETWORK_ROUTING_KEY
from as_side.errors import (
    KeyNotFoundError,
    KeyRequestRejectedError,
    KeyRequestTimeoutError,
    UnexpectedReplyError,
)
from broker_adapter.envelope import OpenedMessage
from broker_adapter.errors import RequestTimeoutError
from broker_adapter.secure import SecureRequester

log = logging.getLogger("as_side.client")

KEY_REQUESTS = Counter(
    "akma_af_key_requests_total",
    "get_application_key calls by how they were served (cache, shared, network) and outcome.",
    ["source", "outcome"],
)
CACHE_DROPS = Counter(
    "akma_af_cache_drops_total", "Cached keys dropped, by reason.", ["reason"]
)


@dataclass(frozen=True)
class ApplicationKey:
    a_kid: str
    k_af: bytes = field(repr=False)
    expiry_ms: int
    supi: str | None = None
    gpsi: str | None = None


class AkmaKeyClient:
    def __init__(
        self,
        requester: SecureRequester,
        *,
        af_id: bytes,
        clock_ms: Callable[[], int],
        network: str = NETWORK_IDENTITY,
        routing_key: str = NETWORK_ROUTING_KEY,
        timeout_s: float = 5.0,
        attempts: int = 3,
        # Stop using a cached key this long before it expires, so it is not used in flight.
        expiry_margin_ms: int = 5_000,
        max_cached: int = 100_000,
    ) -> None:
        self._requester = requester
        self._af_id = af_id
        self._clock = clock_ms
        self._network = network
        self._routing_key = routing_key
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._margin = expiry_margin_ms
        self._max_cached = max_cached
        self._cache: OrderedDict[tuple[str, bool], ApplicationKey] = OrderedDict()
        self._in_flight: dict[tuple[str, bool], asyncio.Future[ApplicationKey]] = {}
        # In-flight fetches whose A-KID was dropped meanwhile (a context-removed notification
        # processed before the answer). Their answer may predate the removal, so it goes to the
        # waiting callers but is not cached: otherwise a removed context's K_AF would be served
        # from the cache until its expiry.
        self._dropped_in_flight: set[tuple[str, bool]] = set()

    async def get_application_key(self, a_kid: str, *, anonymous: bool = False) -> ApplicationKey:
        key = (a_kid, anonymous)
        cached = self._cache.get(key)
        if cached is not None:
            if cached.expiry_ms - self._margin > self._clock():
                self._cache.move_to_end(key)
                KEY_REQUESTS.labels(source="cache", outcome="ok").inc()
                return cached
            del self._cache[key]
            CACHE_DROPS.labels(reason="expired").inc()
        shared = self._in_flight.get(key)
        if shared is not None:
            KEY_REQUESTS.labels(source="shared", outcome="waited").inc()
            return await asyncio.shield(shared)
        future: asyncio.Future[ApplicationKey] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await self._fetch(a_kid, anonymous)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                # Retrieve it here too, so a future nobody else awaited logs no warning.
                future.exception()
            KEY_REQUESTS.labels(source="network", outcome=getattr(exc, "code", "error")).inc()
            raise
        finally:
            self._in_flight.pop(key, None)
            dropped_meanwhile = key in self._dropped_in_flight
            self._dropped_in_flight.discard(key)
        future.set_result(result)
        if not dropped_meanwhile:
            self._remember(key, result)
        KEY_REQUESTS.labels(source="network", outcome="ok").inc()
        return result

    async def _fetch(self, a_kid: str, anonymous: bool) -> ApplicationKey:
        request = AkmaAfKeyRequest(af_id=self._af_id, a_kid=a_kid, anon_ind=anonymous)
        try:
            answer = await self._requester.request(
                self._network,
                self._routing_key,
                request.MSG_TYPE,
                request.to_body(),
                timeout_s=self._timeout_s,
                attempts=self._attempts,
            )
        except RequestTimeoutError as exc:
            raise KeyRequestTimeoutError(str(exc)) from exc
        if answer.msg_type not in REPLY_TYPES[request.MSG_TYPE]:
            raise UnexpectedReplyError(f"{answer.msg_type} does not answer {request.MSG_TYPE}")
        try:
            reply = decode_body(answer.msg_type, answer.body)
        except ContractError as exc:
            raise UnexpectedReplyError(exc.code) from exc
        if isinstance(reply, KeyNotFound):
            raise KeyNotFoundError(a_kid)
        if isinstance(reply, Rejected):
            raise KeyRequestRejectedError(reply.reason)
        if not isinstance(reply, AkmaAfKeyData):
            raise UnexpectedReplyError(answer.msg_type)
        return ApplicationKey(a_kid, reply.k_af, reply.expiry_ms, reply.supi, reply.gpsi)

    def _remember(self, key: tuple[str, bool], value: ApplicationKey) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
            CACHE_DROPS.labels(reason="capacity").inc()

    def drop(self, a_kid: str) -> int:
        """Forget every cached key for ``a_kid``, and keep the answers to fetches in flight for
        it out of the cache; returns how many cached keys were dropped."""
        self._dropped_in_flight.update(k for k in self._in_flight if k[0] == a_kid)
        dropped = [k for k in self._cache if k[0] == a_kid]
        for k in dropped:
            del self._cache[k]
        return len(dropped)

    def cached(self, a_kid: str, *, anonymous: bool = False) -> ApplicationKey | None:
        return self._cache.get((a_kid, anonymous))

    async def on_notification(self, opened: OpenedMessage) -> None:
        """Handle an unsolicited, already verified message from the inbox."""
        if opened.sender != self._network:
            log.warning("notification from unexpected party %s ignored", opened.sender)
            return
        try:
            message = decode_body(opened.msg_type, opened.body)
        except ContractError as exc:
            log.warning("undecodable notification: %s", exc.code)
            return
        if isinstance(message, ContextRemovedNotification):
            count = self.drop(message.a_kid)
            CACHE_DROPS.labels(reason=message.reason).inc(count)
            log.info("context removed", extra={"a_kid": message.a_kid, "dropped": count})
