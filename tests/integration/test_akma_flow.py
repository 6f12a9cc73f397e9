"""AKMA over the secure broker, end to end: AUSF registers, AFs fetch K_AF, equal to the UE's."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from akma_contract.identifiers import UA_TLS13_SHARED_KEY
from akma_contract.messages import (
    AnchorKeyRegistered,
    ContextRemovedNotification,
    ContextRemoveDone,
)
from akma_contract.topology import REPLY_EXCHANGE, REQUEST_EXCHANGE, inbox_queue
from as_side.errors import KeyNotFoundError, KeyRequestRejectedError
from network_side.aanf import AanfConfig
from network_side.ue_sim import UeSimulator
from tests.integration import akma_harness as h

pytestmark = pytest.mark.broker

REALM = "5gc.mnc001.mcc001.3gppnetwork.org"


def _ue(supi: str = "imsi-001010000000001", gpsi: str | None = "msisdn-15550001") -> UeSimulator:
    return UeSimulator(supi=supi, k_ausf=os.urandom(32), realm=REALM, gpsi=gpsi)


async def test_both_afs_get_the_ues_key(broker: Any, pki: Any, tmp_path: Path) -> None:
    ue = _ue()
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af1.example.com", tmp_path) as af1, \
            h.af(broker, pki, "af2.example.com", tmp_path) as af2:
        registered = await ausf.register(ue.anchor_key_info())
        assert isinstance(registered, AnchorKeyRegistered)
        assert registered.a_kid == ue.a_kid

        key1 = await af1.client.get_application_key(ue.a_kid)
        key2 = await af2.client.get_application_key(ue.a_kid)
        assert key1.k_af == ue.k_af("af1.example.com", UA_TLS13_SHARED_KEY)
        assert key2.k_af == ue.k_af("af2.example.com", UA_TLS13_SHARED_KEY)
        assert key1.k_af != key2.k_af
        # af1 is internal (SUPI), af2 external (GPSI only, never the SUPI).
        assert key1.supi == ue.supi
        assert key2.supi is None and key2.gpsi == ue.gpsi


async def test_unknown_akid_and_af_id_of_another_af(broker: Any, pki: Any, tmp_path: Path) -> None:
    ue = _ue("imsi-001010000000002")
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af2.example.com", tmp_path, af_fqdn="af1.example.com") as rogue, \
            h.af(broker, pki, "af1.example.com", tmp_path) as af1:
        await ausf.register(ue.anchor_key_info())
        # AF2 is authenticated and authorised for its own AF_ID, but asks with AF1's.
        with pytest.raises(KeyRequestRejectedError) as refused:
            await rogue.client.get_application_key(ue.a_kid)
        assert refused.value.reason == "unauthorized"
        # An A-KID the network never registered: "not found", not a crash or a timeout.
        with pytest.raises(KeyNotFoundError):
            await af1.client.get_application_key(_ue("imsi-001010000000003").a_kid)


async def test_twenty_concurrent_calls_make_one_request(
    broker: Any, pki: Any, tmp_path: Path
) -> None:
    ue = _ue("imsi-001010000000004")
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af1.example.com", tmp_path) as af1:
        await ausf.register(ue.anchor_key_info())
        before = _served_keys()
        keys = await asyncio.gather(*(af1.client.get_application_key(ue.a_kid) for _ in range(20)))
        assert len({k.k_af for k in keys}) == 1
        assert _served_keys() - before == 1
        # A later call is served from the AF's cache: still one.
        await af1.client.get_application_key(ue.a_kid)
        assert _served_keys() - before == 1


@pytest.mark.parametrize(
    "opening",
    [{"envelope_thread": True}, {"envelope_thread": False}],
    ids=["envelope-thread", "all-on-the-loop"],
)
async def test_envelopes_opened_on_a_worker_thread_or_on_the_loop(
    broker: Any, pki: Any, tmp_path: Path, opening: dict[str, Any]
) -> None:
    # SecuritySettings.envelope_thread: on, a loop turn's deliveries go to the envelope thread
    # once there are a few of them; off, everything runs on the loop. Both give the same
    # answers and the same refusals, on both sides.
    ues = [_ue(f"imsi-00101000000{i:04d}") for i in range(12)]
    async with h.network(broker, pki, tmp_path, **opening), \
            h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af1.example.com", tmp_path, **opening) as af1, \
            h.af(broker, pki, "af2.example.com", tmp_path, af_fqdn="af1.example.com",
                 **opening) as rogue:
        for ue in ues:
            await ausf.register(ue.anchor_key_info())
        keys = await asyncio.gather(*(af1.client.get_application_key(ue.a_kid) for ue in ues))
        assert [k.k_af for k in keys] == [
            ue.k_af("af1.example.com", UA_TLS13_SHARED_KEY) for ue in ues
        ]
        with pytest.raises(KeyRequestRejectedError) as refused:
            await rogue.client.get_application_key(ues[0].a_kid)
        assert refused.value.reason == "unauthorized"


def _served_keys() -> float:
    value = REGISTRY.get_sample_value(
        "akma_network_requests_total",
        {"request": "akma.af_key.request", "answer": "akma.af_key.data"},
    )
    return value or 0.0


# ---- lifetimes -----------------------------------------------------------------------------------


async def test_expired_context_is_not_found(broker: Any, pki: Any, tmp_path: Path) -> None:
    ue = _ue("imsi-001010000000011")
    clock = h.ShiftedClock()
    config = AanfConfig(context_lifetime_ms=60_000, k_af_lifetime_ms=3_600_000)
    async with h.network(broker, pki, tmp_path, clock=clock, config=config), \
            h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af1.example.com", tmp_path) as af1, \
            h.af(broker, pki, "af2.example.com", tmp_path) as af2:
        before = clock()
        await ausf.register(ue.anchor_key_info())
        after = clock()
        key = await af1.client.get_application_key(ue.a_kid)
        # The K_AF lifetime (1 h) is longer than the context's (60 s): the context's expiry wins.
        assert before + 60_000 <= key.expiry_ms <= after + 60_000

        clock.advance(60_000)
        # Past the context's expiry: "not found" for an AF that never asked, for the anonymous
        # variant, and for the AF that asked before once it stops using its cached copy.
        with pytest.raises(KeyNotFoundError):
            await af2.client.get_application_key(ue.a_kid)
        with pytest.raises(KeyNotFoundError):
            await af1.client.get_application_key(ue.a_kid, anonymous=True)
        assert af1.client.drop(ue.a_kid) == 1
        with pytest.raises(KeyNotFoundError):
            await af1.client.get_application_key(ue.a_kid)


async def test_k_af_expiry_never_beyond_the_context(broker: Any, pki: Any, tmp_path: Path) -> None:
    ue = _ue("imsi-001010000000012")
    clock = h.ShiftedClock()
    config = AanfConfig(context_lifetime_ms=60_000, k_af_lifetime_ms=40_000)
    async with h.network(broker, pki, tmp_path, clock=clock, config=config), \
            h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af1.example.com", tmp_path) as af1, \
            h.af(broker, pki, "af2.example.com", tmp_path) as af2:
        registered_from = clock()
        await ausf.register(ue.anchor_key_info())
        registered_by = clock()

        # Early in the context's life the K_AF's own lifetime (40 s) applies.
        asked_from = clock()
        early = await af1.client.get_application_key(ue.a_kid)
        asked_by = clock()
        assert asked_from + 40_000 <= early.expiry_ms <= asked_by + 40_000

        # 30 s later only 30 s of context are left: the K_AF is cut to the context's expiry.
        clock.advance(30_000)
        late = await af2.client.get_application_key(ue.a_kid)
        assert registered_from + 60_000 <= late.expiry_ms <= registered_by + 60_000
        assert late.expiry_ms < clock() + 40_000
        assert late.k_af == ue.k_af("af2.example.com", UA_TLS13_SHARED_KEY)


# ---- context removal and re-registration ---------------------------------------------------------


async def test_context_removed_notifies_the_afs_that_fetched(
    broker: Any, pki: Any, tmp_path: Path
) -> None:
    ue = _ue("imsi-001010000000013")
    other = _ue("imsi-001010000000014")
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af1.example.com", tmp_path) as af1, \
            h.af(broker, pki, "af2.example.com", tmp_path) as af2:
        await ausf.register(ue.anchor_key_info())
        await ausf.register(other.anchor_key_info())
        await af1.client.get_application_key(ue.a_kid)
        await af1.client.get_application_key(ue.a_kid, anonymous=True)
        await af2.client.get_application_key(ue.a_kid)
        await af1.client.get_application_key(other.a_kid)
        drops_before = h.metric_total("akma_af_cache_drops_total", {"reason": "removed"})

        done = await ausf.remove(ue.supi)
        assert isinstance(done, ContextRemoveDone)

        # The notification travels network -> akma.replies -> each AF's inbox, sealed like any
        # answer; each AF drops every cached key for that A-KID.
        def all_dropped() -> bool:
            return (
                af1.client.cached(ue.a_kid) is None
                and af1.client.cached(ue.a_kid, anonymous=True) is None
                and af2.client.cached(ue.a_kid) is None
            )

        await h.wait_until(all_dropped, timeout_s=10)
        drops = h.metric_total("akma_af_cache_drops_total", {"reason": "removed"})
        assert drops - drops_before == 3
        # Another subscriber's key is untouched.
        assert af1.client.cached(other.a_kid) is not None
        with pytest.raises(KeyNotFoundError):
            await af1.client.get_application_key(ue.a_kid)
        with pytest.raises(KeyNotFoundError):
            await af2.client.get_application_key(ue.a_kid)
        # Removing again (a redelivered removal) is not an error.
        assert isinstance(await ausf.remove(ue.supi), ContextRemoveDone)


async def test_notification_during_a_fetch_keeps_its_answer_out_of_the_cache(
    broker: Any, pki: Any, tmp_path: Path
) -> None:
    ue = _ue("imsi-001010000000019")
    inbox = inbox_queue("af1.example.com")
    master_key = os.urandom(32)
    h.purge(h.management(broker, pki), h.REQUEST_QUEUE, inbox)
    async with h.network(broker, pki, tmp_path, master_key=master_key), \
            h.ausf(broker, pki, tmp_path) as ausf:
        await ausf.register(ue.anchor_key_info())
    async with h.af(broker, pki, "af1.example.com", tmp_path) as af1:
        # The network is down, so af1's request waits in the queue: a fetch in flight.
        published = h.metric_total(
            "akma_broker_published_total", {"exchange": REQUEST_EXCHANGE, "outcome": "confirmed"}
        )
        fetch = asyncio.create_task(af1.client.get_application_key(ue.a_kid))
        await h.wait_until(lambda: h.metric_total(
            "akma_broker_published_total", {"exchange": REQUEST_EXCHANGE, "outcome": "confirmed"}
        ) > published)

        # Meanwhile the context is removed and af1 is told so (sealed by the network party)
        # before the answer to its fetch comes back.
        note = ContextRemovedNotification(a_kid=ue.a_kid, reason="removed")
        seen = {"queue": inbox, "msg_type": note.MSG_TYPE}
        accepted = h.metric_total("akma_secure_accepted_total", seen)
        notifier = await h.open_party(broker, pki, pki.network, tmp_path)
        try:
            await notifier.endpoint.send(REPLY_EXCHANGE, "af1.example.com", "af1.example.com",
                                         note.MSG_TYPE, note.to_body())
        finally:
            await notifier.close()
        await h.wait_until(lambda: h.metric_total("akma_secure_accepted_total", seen) > accepted)
        assert not fetch.done()

        async with h.network(broker, pki, tmp_path, master_key=master_key):
            key = await asyncio.wait_for(fetch, 20)
            # The caller gets its answer, but the key is not cached: it may predate the removal.
            assert key.k_af == ue.k_af("af1.example.com", UA_TLS13_SHARED_KEY)
            assert af1.client.cached(ue.a_kid) is None
            # The next fetch (the context still exists here) is cached as usual.
            await af1.client.get_application_key(ue.a_kid)
            assert af1.client.cached(ue.a_kid) is not None


async def test_re_registration_replaces_the_old_akid(broker: Any, pki: Any, tmp_path: Path) -> None:
    supi = "imsi-001010000000015"
    old = _ue(supi)
    new = _ue(supi)  # same SUPI, a fresh K_AUSF: the UE authenticated again
    assert old.a_kid != new.a_kid
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af1.example.com", tmp_path) as af1, \
            h.af(broker, pki, "af2.example.com", tmp_path) as af2:
        await ausf.register(old.anchor_key_info())
        old_key = await af1.client.get_application_key(old.a_kid)
        assert old_key.k_af == old.k_af("af1.example.com", UA_TLS13_SHARED_KEY)

        registered = await ausf.register(new.anchor_key_info())
        assert isinstance(registered, AnchorKeyRegistered) and registered.a_kid == new.a_kid

        # af1 held a key under the replaced A-KID and is told so.
        await h.wait_until(lambda: af1.client.cached(old.a_kid) is None, timeout_s=10)
        with pytest.raises(KeyNotFoundError):
            await af1.client.get_application_key(old.a_kid)
        with pytest.raises(KeyNotFoundError):
            await af2.client.get_application_key(old.a_kid)
        new_key = await af1.client.get_application_key(new.a_kid)
        assert new_key.k_af == new.k_af("af1.example.com", UA_TLS13_SHARED_KEY)
        assert new_key.k_af != old_key.k_af
        assert new_key.supi == supi


# ---- identity exposure ---------------------------------------------------------------------------


async def test_external_af_never_sees_a_supi(broker: Any, pki: Any, tmp_path: Path) -> None:
    with_gpsi = _ue("imsi-001010000000016", gpsi="msisdn-15550016")
    without_gpsi = _ue("imsi-001010000000017", gpsi=None)
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af1.example.com", tmp_path) as af1, \
            h.af(broker, pki, "af2.example.com", tmp_path) as af2:
        await ausf.register(with_gpsi.anchor_key_info())
        await ausf.register(without_gpsi.anchor_key_info())
        expected = {
            ue.a_kid: ue.k_af("af2.example.com", UA_TLS13_SHARED_KEY)
            for ue in (with_gpsi, without_gpsi)
        }

        named = await af2.client.get_application_key(with_gpsi.a_kid)
        assert (named.supi, named.gpsi) == (None, "msisdn-15550016")
        anonymous = await af2.client.get_application_key(with_gpsi.a_kid, anonymous=True)
        assert (anonymous.supi, anonymous.gpsi) == (None, None)
        # No GPSI registered: the external AF gets no identity at all, never the SUPI instead.
        bare = await af2.client.get_application_key(without_gpsi.a_kid)
        assert (bare.supi, bare.gpsi) == (None, None)
        for key in (named, anonymous, bare):
            assert key.k_af == expected[key.a_kid]
        # The same subscriber seen by the internal AF does carry the SUPI: the policy differs,
        # the context does not.
        internal = await af1.client.get_application_key(without_gpsi.a_kid)
        assert internal.supi == without_gpsi.supi


async def test_anonymous_request_carries_no_identity(broker: Any, pki: Any, tmp_path: Path) -> None:
    ue = _ue("imsi-001010000000018", gpsi="msisdn-15550018")
    async with h.network(broker, pki, tmp_path), h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af1.example.com", tmp_path) as af1:
        await ausf.register(ue.anchor_key_info())
        anonymous = await af1.client.get_application_key(ue.a_kid, anonymous=True)
        assert anonymous.supi is None and anonymous.gpsi is None
        assert anonymous.k_af == ue.k_af("af1.example.com", UA_TLS13_SHARED_KEY)
        # Named and anonymous answers are cached apart: asking by name now still gets the SUPI.
        named = await af1.client.get_application_key(ue.a_kid)
        assert named.supi == ue.supi
        assert named.k_af == anonymous.k_af
        assert af1.client.cached(ue.a_kid, anonymous=True) == anonymous
