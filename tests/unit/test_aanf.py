"""AAnF logic (network_side.aanf) over a real SQLite store and a controllable clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from akma_contract.errors import InvalidAfIdError, InvalidAkidError
from akma_contract.messages import AkmaAfKeyRequest, AkmaKeyInfo
from network_side.aanf import Aanf, AanfConfig, AfToNotify, IdentityExposure
from network_side.akma import UA_TLS13_SHARED_KEY, derive_k_af, make_af_id
from network_side.context_store import SqliteContextStore
from network_side.errors import ConfigError, ContextExpiredError, NotFoundError, UnknownAkidError
from network_side.ue_sim import UeSimulator

REALM = "5gc.mnc001.mcc001.3gppnetwork.org"
AF1 = make_af_id("af1.example.com", UA_TLS13_SHARED_KEY)
AF2 = make_af_id("af2.example.com", bytes.fromhex("0100011301"))
T0 = 1_700_000_000_000
CONFIG = AanfConfig(context_lifetime_ms=10_000, k_af_lifetime_ms=4_000)


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def aanf(tmp_path: Path, clock: Clock) -> Iterator[Aanf]:
    store = SqliteContextStore(tmp_path / "ctx.db", master_key=bytes(32))
    yield Aanf(store, clock, CONFIG)
    store.close()


def ue(n: int = 1, k_byte: int = 7) -> UeSimulator:
    return UeSimulator(
        supi=f"imsi-00101000000000{n}",
        k_ausf=bytes([k_byte]) * 32,
        realm=REALM,
        gpsi=f"msisdn-4915100000{n}",
    )


def req(u: UeSimulator, af_id: bytes = AF1, anon: bool = False) -> AkmaAfKeyRequest:
    return AkmaAfKeyRequest(af_id=af_id, a_kid=u.a_kid, anon_ind=anon)


def test_key_matches_ue_and_carries_supi(aanf: Aanf) -> None:
    u = ue()
    out = aanf.register_anchor_key(u.anchor_key_info())
    assert (out.a_kid, out.replaced_a_kid, out.to_notify) == (u.a_kid, None, ())
    data = aanf.get_application_key(req(u), "af1.example.com")
    assert data.k_af == u.k_af("af1.example.com", UA_TLS13_SHARED_KEY)
    assert data.k_af == derive_k_af(u.k_akma, AF1)
    assert (data.supi, data.gpsi) == (u.supi, None)
    assert data.expiry_ms == T0 + 4_000


def test_k_af_bound_to_af_id(aanf: Aanf) -> None:
    u = ue()
    aanf.register_anchor_key(u.anchor_key_info())
    k1 = aanf.get_application_key(req(u, AF1), "x").k_af
    k2 = aanf.get_application_key(req(u, AF2), "x").k_af
    assert k1 != k2 and k2 == u.k_af("af2.example.com", bytes.fromhex("0100011301"))


def test_exposure_policy(aanf: Aanf) -> None:
    u = ue()
    aanf.register_anchor_key(u.anchor_key_info())
    gpsi_only = aanf.get_application_key(req(u), "x", exposure=IdentityExposure.GPSI)
    assert (gpsi_only.supi, gpsi_only.gpsi) == (None, u.gpsi)
    none = aanf.get_application_key(req(u), "x", exposure=IdentityExposure.NONE)
    assert (none.supi, none.gpsi) == (None, None)


def test_anonymous_variant_carries_no_identity(aanf: Aanf) -> None:
    u = ue()
    aanf.register_anchor_key(u.anchor_key_info())
    data = aanf.get_application_key(req(u, anon=True), "x", exposure=IdentityExposure.SUPI)
    assert (data.supi, data.gpsi) == (None, None)
    assert data.k_af == derive_k_af(u.k_akma, AF1)


def test_k_af_never_outlives_context(aanf: Aanf, clock: Clock) -> None:
    u = ue()
    aanf.register_anchor_key(u.anchor_key_info())  # context expires at T0 + 10_000
    clock.now = T0 + 8_000
    assert aanf.get_application_key(req(u), "x").expiry_ms == T0 + 10_000
    clock.now = T0 + 9_999
    assert aanf.get_application_key(req(u), "x").expiry_ms == T0 + 10_000
    clock.now = T0 + 10_000
    with pytest.raises(ContextExpiredError) as info:
        aanf.get_application_key(req(u), "x")
    assert isinstance(info.value, NotFoundError)


def test_unknown_akid_is_not_found(aanf: Aanf) -> None:
    with pytest.raises(UnknownAkidError) as info:
        aanf.get_application_key(req(ue()), "x")
    assert isinstance(info.value, NotFoundError) and info.value.code == "unknown_akid"


def test_malformed_input_refused(aanf: Aanf) -> None:
    u = ue()
    aanf.register_anchor_key(u.anchor_key_info())
    with pytest.raises(InvalidAkidError):
        aanf.get_application_key(AkmaAfKeyRequest(af_id=AF1, a_kid="x@y.org"), "x")
    with pytest.raises(InvalidAfIdError):
        aanf.get_application_key(
            AkmaAfKeyRequest(af_id=b"BAD.example.com\x01\x00\x00\x00\x07", a_kid=u.a_kid), "x"
        )
    with pytest.raises(InvalidAkidError):
        aanf.register_anchor_key(AkmaKeyInfo(supi="imsi-00101", a_kid="x@y.org", k_akma=bytes(32)))


def test_reregistration_replaces_old_akid_and_reports_fetchers(aanf: Aanf, clock: Clock) -> None:
    old = ue(k_byte=7)
    aanf.register_anchor_key(old.anchor_key_info())
    aanf.get_application_key(req(old), "af1.example.com")
    aanf.get_application_key(req(old, AF2, anon=True), "af2.example.com")
    new = ue(k_byte=8)  # Same SUPI, new K_AUSF after re-authentication.
    assert new.a_kid != old.a_kid
    clock.now += 1
    out = aanf.register_anchor_key(new.anchor_key_info())
    assert out.replaced_a_kid == old.a_kid
    assert out.to_notify == (
        AfToNotify("af1.example.com", old.a_kid),
        AfToNotify("af2.example.com", old.a_kid),
    )
    with pytest.raises(UnknownAkidError):
        aanf.get_application_key(req(old), "af1.example.com")
    assert aanf.get_application_key(req(new), "af1.example.com").k_af == derive_k_af(
        new.k_akma, AF1
    )


def test_redelivered_registration_is_harmless(aanf: Aanf) -> None:
    u = ue()
    aanf.register_anchor_key(u.anchor_key_info())
    aanf.get_application_key(req(u), "af1.example.com")
    again = aanf.register_anchor_key(u.anchor_key_info())
    assert (again.replaced_a_kid, again.to_notify) == (None, ())
    assert aanf.remove_context(u.supi) == [AfToNotify("af1.example.com", u.a_kid)]


def test_remove_context(aanf: Aanf) -> None:
    u, other = ue(1), ue(2)
    aanf.register_anchor_key(u.anchor_key_info())
    aanf.register_anchor_key(other.anchor_key_info())
    aanf.get_application_key(req(u), "af2.example.com")
    aanf.get_application_key(req(u), "af1.example.com")
    assert aanf.remove_context(u.supi) == [
        AfToNotify("af1.example.com", u.a_kid),
        AfToNotify("af2.example.com", u.a_kid),
    ]
    with pytest.raises(UnknownAkidError):
        aanf.get_application_key(req(u), "af1.example.com")
    assert aanf.remove_context(u.supi) == []  # redelivered removal
    aanf.get_application_key(req(other), "af1.example.com")  # untouched


def test_purge_expired(aanf: Aanf, clock: Clock) -> None:
    aanf.register_anchor_key(ue(1).anchor_key_info())
    clock.now += 5_000
    aanf.register_anchor_key(ue(2).anchor_key_info())
    clock.now = T0 + 10_000
    assert aanf.purge_expired() == 1
    aanf.get_application_key(req(ue(2)), "x")


def test_config_validated() -> None:
    with pytest.raises(ConfigError):
        AanfConfig(context_lifetime_ms=0)
    with pytest.raises(ConfigError):
        AanfConfig(k_af_lifetime_ms=-1)
