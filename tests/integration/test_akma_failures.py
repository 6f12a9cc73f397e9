"""AKMA failure paths over the real TLS broker: unknown parties, parties acting out of role,
replayed, tampered and misaddressed envelopes.

The in-process network is built exactly as the worker builds it, so its Prometheus counters (in
this process) tell how many requests it really handled; dead letters are read back the way an
operator reads them, through the management API.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import pytest

from akma_contract import topology
from akma_contract.identifiers import UA_TLS13_SHARED_KEY, make_af_id
from akma_contract.messages import (
    AkmaAfKeyData,
    AkmaAfKeyRequest,
    CtxRemove,
    Rejected,
    decode_body,
)
from akma_contract.topology import (
    NETWORK_IDENTITY,
    NETWORK_ROUTING_KEY,
    REQUEST_EXCHANGE,
    inbox_queue,
)
from as_side.errors import KeyRequestRejectedError
from broker_adapter.envelope import OpenedMessage
from broker_adapter.pipeline import SecureReceiver
from broker_adapter.runtime import SecureParty
from broker_adapter.secure import SecureRequester
from broker_adapter.transport import Delivery
from broker_adapter.verdict import Ack
from network_side.af_registry import AfRegistry
from network_side.context_store import SqliteContextStore
from network_side.errors import StoreError
from network_side.nef import Nef
from network_side.node import start_network_node
from network_side.service import NetworkService
from network_side.ue_sim import UeSimulator
from tests.integration import akma_harness as h
from tests.integration.support import party_settings

pytestmark = pytest.mark.broker

REALM = "5gc.mnc001.mcc001.3gppnetwork.org"
AF1 = "af1.example.com"
AF1_INBOX = inbox_queue(AF1)
REQUESTS = "akma_network_requests_total"


def _ue(supi: str) -> UeSimulator:
    return UeSimulator(supi=supi, k_ausf=os.urandom(32), realm=REALM, gpsi="msisdn-15550100")


def _key_request(ue: UeSimulator, fqdn: str = AF1) -> AkmaAfKeyRequest:
    return AkmaAfKeyRequest(af_id=make_af_id(fqdn, UA_TLS13_SHARED_KEY), a_kid=ue.a_kid)


def _seal_request(
    party: SecureParty, request: AkmaAfKeyRequest, recipient: str = "network"
) -> tuple[bytes, bytes]:
    return party.endpoint.seal_now(recipient, request.MSG_TYPE, request.to_body())


async def _publish(party: SecureParty, data: bytes, msg_id: bytes, msg_type: str) -> None:
    await party.endpoint.publish_sealed(
        REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, data, msg_id, msg_type=msg_type
    )


# ---- parties outside their role ------------------------------------------------------------------


async def test_af_not_in_the_registry_is_unauthorized(
    broker: Any, pki: Any, tmp_path: Path
) -> None:
    ue = _ue("imsi-001010000000021")
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af3.example.com", tmp_path) as af3:
        await ausf.register(ue.anchor_key_info())
        # af3's certificate is valid (the broker and the envelope accept it), but the NEF does
        # not know it: refused for its own AF_ID ...
        with pytest.raises(KeyRequestRejectedError) as refused:
            await af3.client.get_application_key(ue.a_kid)
        assert refused.value.reason == "unauthorized"
        assert af3.client.cached(ue.a_kid) is None
        # ... and for a registered AF's AF_ID (sent through af3's own requester: one consumer
        # per inbox, so no answer can go to the wrong waiter).
        request = _key_request(ue, AF1)
        answer = await af3.requester.request(
            NETWORK_IDENTITY, NETWORK_ROUTING_KEY, request.MSG_TYPE, request.to_body(), timeout_s=5
        )
        reply = decode_body(answer.msg_type, answer.body)
        assert isinstance(reply, Rejected) and reply.reason == "unauthorized"


async def test_an_af_cannot_act_as_the_ausf(broker: Any, pki: Any, tmp_path: Path) -> None:
    ue = _ue("imsi-001010000000022")
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, AF1, tmp_path) as af1:
        await ausf.register(ue.anchor_key_info())
        # An internal AF may learn the SUPI, but it still may not register or remove contexts.
        forged = _ue("imsi-001010000000023").anchor_key_info()
        for message in (forged, CtxRemove(supi=ue.supi)):
            answer = await af1.requester.request(
                NETWORK_IDENTITY, NETWORK_ROUTING_KEY, message.MSG_TYPE, message.to_body(),
                timeout_s=5,
            )
            reply = decode_body(answer.msg_type, answer.body)
            assert isinstance(reply, Rejected) and reply.reason == "unauthorized"
        # The context is still there and the forged one was never stored.
        key = await af1.client.get_application_key(ue.a_kid)
        assert key.k_af == ue.k_af(AF1, UA_TLS13_SHARED_KEY)


# ---- replay --------------------------------------------------------------------------------------


async def test_replayed_request_is_processed_once_and_answered_from_cache(
    broker: Any, pki: Any, tmp_path: Path
) -> None:
    ue = _ue("imsi-001010000000024")
    mgmt = h.management(broker, pki)
    h.purge(mgmt, h.REQUEST_QUEUE, AF1_INBOX)
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf:
        await ausf.register(ue.anchor_key_info())
        party = await h.open_party(broker, pki, AF1, tmp_path)
        inbox = h.InboxRecorder(party, AF1_INBOX)
        await inbox.start()
        try:
            request = _key_request(ue)
            data, msg_id = _seal_request(party, request)
            handled = h.metric_total(REQUESTS)
            duplicates = h.metric_total(
                "akma_secure_duplicates_total", {"queue": h.REQUEST_QUEUE, "kind": "done"}
            )

            await _publish(party, data, msg_id, request.MSG_TYPE)
            await h.wait_until(lambda: len(inbox.deliveries) == 1, timeout_s=10)
            assert h.metric_total(REQUESTS) == handled + 1

            # The very same bytes again, as an attacker on the wire or a retrying client would.
            await _publish(party, data, msg_id, request.MSG_TYPE)
            await h.wait_until(lambda: len(inbox.deliveries) == 2, timeout_s=10)
            assert h.metric_total(REQUESTS) == handled + 1, "the duplicate was processed again"
            assert h.metric_total(
                "akma_secure_duplicates_total", {"queue": h.REQUEST_QUEUE, "kind": "done"}
            ) == duplicates + 1

            first, resent = inbox.deliveries
            # The cached sealed answer is re-sent byte for byte, not derived again.
            assert resent.body == first.body
            assert resent.correlation_id == first.correlation_id == msg_id.hex()
            assert resent.user_id == "network"

            # Suppose the first answer was lost before the AF looked at it: the re-sent copy is
            # a full answer that passes every check on the AF side and carries the right key.
            opened = await _through_guard(party, resent)
            assert opened is not None and opened.correlation_id == msg_id
            answer = decode_body(opened.msg_type, opened.body)
            assert isinstance(answer, AkmaAfKeyData)
            assert answer.k_af == ue.k_af(AF1, UA_TLS13_SHARED_KEY)
            # And the AF in turn processes that answer once: the other copy is a duplicate.
            assert await _through_guard(party, first) is None
        finally:
            await inbox.stop()
            await party.close()


async def test_requester_takes_one_answer_per_request_and_drops_repeats(
    broker: Any, pki: Any, tmp_path: Path
) -> None:
    # SecureRequester deduplicates answers by its table of waiting requests, not by the replay
    # store: the network's re-sent cached answer (what a replay of the answer would also look
    # like) must be acked, counted and dropped, never handed to anyone.
    ue = _ue("imsi-001010000000027")
    h.purge(h.management(broker, pki), h.REQUEST_QUEUE, AF1_INBOX)
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf:
        await ausf.register(ue.anchor_key_info())
        party = await h.open_party(broker, pki, AF1, tmp_path)
        requester = SecureRequester(
            party.endpoint, party.connection, AF1_INBOX,
            request_exchange=topology.REQUEST_EXCHANGE,
            dead_letter_exchange=topology.DEAD_LETTER_EXCHANGE)
        sealed: list[tuple[bytes, bytes]] = []
        seal = party.endpoint.seal_now

        def recording_seal(*args: Any, **kwargs: Any) -> tuple[bytes, bytes]:
            sealed.append(seal(*args, **kwargs))
            return sealed[-1]

        party.endpoint.seal_now = recording_seal  # type: ignore[method-assign]
        await requester.start()
        unmatched = {"queue": AF1_INBOX}
        try:
            request = _key_request(ue)
            before = h.metric_total("akma_secure_unmatched_answers_total", unmatched)
            handled = h.metric_total(REQUESTS)
            answer = await requester.request(
                NETWORK_IDENTITY, NETWORK_ROUTING_KEY, request.MSG_TYPE, request.to_body(),
                timeout_s=5,
            )
            data = decode_body(answer.msg_type, answer.body)
            assert isinstance(data, AkmaAfKeyData)
            assert data.k_af == ue.k_af(AF1, UA_TLS13_SHARED_KEY)
            ((request_bytes, msg_id),) = sealed
            assert answer.correlation_id == msg_id

            # The same request bytes again: the network answers from its cache, and that
            # answer reaches an AF that is no longer waiting for it.
            await _publish(party, request_bytes, msg_id, request.MSG_TYPE)
            await h.wait_until(
                lambda: h.metric_total("akma_secure_unmatched_answers_total", unmatched)
                == before + 1,
                timeout_s=10,
            )
            assert h.metric_total(REQUESTS) == handled + 1
        finally:
            await requester.stop()
            await party.close()


async def _through_guard(party: SecureParty, delivery: Delivery) -> OpenedMessage | None:
    """Run one delivery through the party's open + replay checks; the message if processed."""
    processed: list[OpenedMessage] = []

    async def handle(opened: OpenedMessage) -> None:
        processed.append(opened)

    assert await SecureReceiver(party.endpoint, handle)([delivery]) == [Ack()]
    return processed[0] if processed else None


# ---- tampered and misaddressed envelopes ---------------------------------------------------------


async def test_tampered_envelope_is_dead_lettered(broker: Any, pki: Any, tmp_path: Path) -> None:
    ue = _ue("imsi-001010000000025")
    mgmt = h.management(broker, pki)
    h.purge(mgmt, h.REQUEST_QUEUE, AF1_INBOX)
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf:
        await ausf.register(ue.anchor_key_info())
        party = await h.open_party(broker, pki, AF1, tmp_path)
        inbox = h.InboxRecorder(party, AF1_INBOX)
        await inbox.start()
        try:
            request = _key_request(ue)
            data, msg_id = _seal_request(party, request)
            # One bit flipped in the last bytes: the AEAD tag of the HPKE ciphertext.
            tampered = data[:-3] + bytes([data[-3] ^ 0x01]) + data[-2:]
            handled = h.metric_total(REQUESTS)
            rejected = h.metric_total(
                "akma_broker_rejected_total",
                {"queue": h.REQUEST_QUEUE, "reason": "decryption_failed"},
            )

            # Published by a legitimate party: the broker accepts it (user_id matches the login).
            await _publish(party, tampered, msg_id, request.MSG_TYPE)
            await h.wait_until(
                lambda: h.metric_total(
                    "akma_broker_rejected_total",
                    {"queue": h.REQUEST_QUEUE, "reason": "decryption_failed"},
                ) == rejected + 1,
                timeout_s=10,
            )
            assert h.metric_total(REQUESTS) == handled
            if mgmt is not None:
                letter = await h.dead_letter_with(mgmt, msg_id.hex())
                headers = letter["properties"]["headers"]
                assert headers["x-akma-reason"] == "decryption_failed"
                assert headers["x-akma-queue"] == h.REQUEST_QUEUE
                assert headers["x-akma-consumer"] == "network"
                assert headers["x-akma-original-user-id"] == AF1
                assert base64.b64decode(letter["payload"]) == tampered

            # The failed copy did not burn the message id: the genuine envelope still works.
            await _publish(party, data, msg_id, request.MSG_TYPE)
            await h.wait_until(lambda: len(inbox.deliveries) == 1, timeout_s=10)
            opened = await _through_guard(party, inbox.deliveries[0])
            assert opened is not None and opened.correlation_id == msg_id
            answer = decode_body(opened.msg_type, opened.body)
            assert isinstance(answer, AkmaAfKeyData)
            assert h.metric_total(REQUESTS) == handled + 1
        finally:
            await inbox.stop()
            await party.close()


async def test_envelope_for_another_recipient_is_dead_lettered(
    broker: Any, pki: Any, tmp_path: Path
) -> None:
    ue = _ue("imsi-001010000000026")
    mgmt = h.management(broker, pki)
    h.purge(mgmt, h.REQUEST_QUEUE)
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf:
        await ausf.register(ue.anchor_key_info())
        party = await h.open_party(broker, pki, AF1, tmp_path)
        try:
            request = _key_request(ue)
            # A genuine envelope from af1, sealed to af2, dropped into the network's queue.
            data, msg_id = _seal_request(party, request, recipient="af2.example.com")
            handled = h.metric_total(REQUESTS)

            def refused() -> float:
                return sum(
                    h.metric_total(
                        "akma_broker_rejected_total", {"queue": h.REQUEST_QUEUE, "reason": reason}
                    )
                    for reason in ("not_for_me", "decryption_failed")
                )

            before = refused()
            await _publish(party, data, msg_id, request.MSG_TYPE)
            await h.wait_until(lambda: refused() == before + 1, timeout_s=10)
            assert h.metric_total(REQUESTS) == handled
            if mgmt is not None:
                letter = await h.dead_letter_with(mgmt, msg_id.hex())
                headers = letter["properties"]["headers"]
                assert headers["x-akma-reason"] in ("not_for_me", "decryption_failed")
                assert headers["x-akma-original-user-id"] == AF1
            # Give a late second processing (there must be none) a moment to show up.
            await asyncio.sleep(0.2)
            assert h.metric_total(REQUESTS) == handled
        finally:
            await party.close()


async def test_a_node_that_fails_to_start_leaves_nothing_open(
    broker: Any, pki: Any, tmp_path: Path
) -> None:
    """``start_network_node`` owns the store and the party it opened: a failed start closes both."""
    store = SqliteContextStore(tmp_path / "contexts.sqlite3", master_key=os.urandom(32))
    opened: list[SecureParty] = []

    def failing_service(party: SecureParty, nef: Nef, prefetch: int) -> NetworkService:
        opened.append(party)
        raise RuntimeError("service could not be built")

    with pytest.raises(RuntimeError, match="could not be built"):
        await start_network_node(
            party_settings(broker, pki, pki.network),
            h.security_for(pki, pki.network, tmp_path),
            store=store,
            registry=AfRegistry.load(h.REGISTRY),
            service_factory=failing_service,
        )
    assert len(opened) == 1 and opened[0].connection.is_closed
    with pytest.raises(StoreError):  # the store was closed
        store.get("anything@example.org")
