"""UE simulator, and the whole AUSF -> AAnF <- AF flow through encoded message bodies.

No broker is involved.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from akma_contract.errors import InvalidAkidError, InvalidKeyError, InvalidSupiError
from akma_contract.messages import AkmaAfKeyData, AkmaAfKeyRequest, decode_body
from network_side.aanf import Aanf
from network_side.af_registry import AfRegistry
from network_side.akid import parse_akid
from network_side.akma import UA_TLS13_SHARED_KEY, derive_a_tid, make_af_id
from network_side.context_store import SqliteContextStore
from network_side.nef import Nef
from network_side.ue_sim import UeSimulator

REPO_ROOT = Path(__file__).resolve().parents[2]
REALM = "5gc.mnc001.mcc001.3gppnetwork.org"


def test_simulator_derivations() -> None:
    u = UeSimulator(supi="imsi-001010000000001", k_ausf=bytes(range(32)), realm=REALM, rid="12")
    assert u.k_akma.hex() == "bba5e95f1205d4f1c217b91e08ec3509ad62cfbf43f474c6bf495da83132c95e"
    assert u.a_tid == derive_a_tid(bytes(range(32)), u.supi)
    assert parse_akid(u.a_kid) == (u.rid, u.a_tid, REALM)
    assert u.k_af("af.example.com", UA_TLS13_SHARED_KEY).hex() == (
        "0260e4af74b1a216db8741d3302874626e918e15dc9948cccccec694746d996c"
    )
    info = u.anchor_key_info()
    assert (info.supi, info.a_kid, info.k_akma) == (u.supi, u.a_kid, u.k_akma)
    assert u.k_ausf.hex() not in repr(u) and u.k_akma.hex() not in repr(u)


def test_simulator_refuses_bad_inputs_at_construction() -> None:
    with pytest.raises(InvalidKeyError):
        UeSimulator(supi="imsi-00101", k_ausf=bytes(16), realm=REALM)
    with pytest.raises(InvalidSupiError):
        UeSimulator(supi="nai-alice@example.com", k_ausf=bytes(32), realm=REALM)
    with pytest.raises(InvalidAkidError):
        UeSimulator(supi="imsi-00101", k_ausf=bytes(32), realm=REALM, rid="12345")


def test_ue_and_af_hold_the_same_key_end_to_end(tmp_path: Path) -> None:
    """AUSF registers, the UE hands its A-KID to each AF, each AF asks the network; every message
    crosses as an encoded body, as it would inside an envelope."""
    now = [1_700_000_000_000]
    store = SqliteContextStore(tmp_path / "ctx.db", master_key=bytes(range(32)))
    nef = Nef(
        AfRegistry.load(REPO_ROOT / "infra" / "af-registry.example.toml"),
        Aanf(store, lambda: now[0]),
        lambda: now[0],
    )
    ue = UeSimulator(
        supi="imsi-208950000000031",
        k_ausf=bytes(range(5, 37)),
        realm=REALM,
        gpsi="msisdn-33612345678",
    )

    def over_the_wire(requester: str, msg_type: str, body: bytes) -> tuple[str, bytes]:
        reply = nef.handle(requester, decode_body(msg_type, body)).reply
        return reply.MSG_TYPE, reply.to_body()

    info = ue.anchor_key_info()
    assert over_the_wire("ausf", info.MSG_TYPE, info.to_body())[0] == "akma.anchor_key.registered"
    for af, ua in [
        ("af1.example.com", UA_TLS13_SHARED_KEY),
        ("af2.example.com", bytes.fromhex("0100011301")),
    ]:
        request = AkmaAfKeyRequest(af_id=make_af_id(af, ua), a_kid=ue.a_kid)
        msg_type, body = over_the_wire(af, request.MSG_TYPE, request.to_body())
        data = decode_body(msg_type, body)
        assert isinstance(data, AkmaAfKeyData)
        assert data.k_af == ue.k_af(af, ua)
        expected_identity = (ue.supi, None) if af == "af1.example.com" else (None, ue.gpsi)
        assert (data.supi, data.gpsi) == expected_identity
    store.close()
