"""AKMA over the secure broker, end to end: AUSF registers, AFs fetch K_AF, equal to the UE's."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from as_side.errors import KeyNotFoundError, KeyRequestRejectedError
from network_side.akma import UA_TLS13_SHARED_KEY
from network_side.messages import AnchorKeyRegistered
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


async def test_twenty_concurrent_calls_make_one_request(broker: Any, pki: Any, tmp_path: Path) -> None:
    ue = _ue("imsi-001010000000004")
    async with h.network(broker, pki, tmp_path) as net, h.ausf(broker, pki, tmp_path) as ausf, \
            h.af(broker, pki, "af1.example.com", tmp_path) as af1:
        await ausf.register(ue.anchor_key_info())
        before = _served_keys()
        keys = await asyncio.gather(*(af1.client.get_application_key(ue.a_kid) for _ in range(20)))
        assert len({k.k_af for k in keys}) == 1
        assert _served_keys() - before == 1
        # A later call is served from the AF's cache: still one.
        await af1.client.get_application_key(ue.a_kid)
        assert _served_keys() - before == 1


def _served_keys() -> float:
    value = REGISTRY.get_sample_value(
        "akma_network_requests_total",
        {"request": "akma.af_key.request", "answer": "akma.af_key.data"},
    )
    return value or 0.0
