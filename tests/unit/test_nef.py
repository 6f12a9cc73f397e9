"""NEF authorisation, AF registry, rate limiting, handlers and the audit log."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from akma_contract.identifiers import UA_TLS13_SHARED_KEY, make_af_id
from akma_contract.messages import (
    AkmaAfKeyData,
    AkmaAfKeyRequest,
    AnchorKeyRegistered,
    ContextRemovedNotification,
    ContextRemoveDone,
    CtxRemove,
    KeyNotFound,
    Rejected,
)
from network_side.aanf import Aanf, AanfConfig, IdentityExposure
from network_side.af_registry import AfEntry, AfKind, AfRegistry
from network_side.audit import AUDIT_LOGGER_NAME, AuditLog
from network_side.context_store import SqliteContextStore
from network_side.errors import ConfigError
from network_side.nef import Nef, Outcome, TokenBucket
from network_side.ue_sim import UeSimulator

REPO_ROOT = Path(__file__).resolve().parents[2]
REALM = "5gc.mnc001.mcc001.3gppnetwork.org"
TLS_PROFILE = bytes.fromhex("0100011301")
AF1_ID = make_af_id("af1.example.com", UA_TLS13_SHARED_KEY)
AF2_ID = make_af_id("af2.example.com", UA_TLS13_SHARED_KEY)
T0 = 1_700_000_000_000

REGISTRY_TOML = """
ausf_identities = ["ausf"]

[[af]]
identity = "af1.example.com"
kind = "internal"
rate_per_second = 2
burst = 3
af_ids = [{ fqdn = "af1.example.com", ua_protocol_id = "0100000007" }]

[[af]]
identity = "af2.example.com"
kind = "external"
rate_per_second = 100.0
burst = 100
af_ids = [
  { fqdn = "af2.example.com", ua_protocol_id = "0100000007" },
  { fqdn = "af2.example.com", ua_protocol_id = "0100011301" },
]
"""


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def nef(tmp_path: Path, clock: Clock) -> Iterator[Nef]:
    store = SqliteContextStore(tmp_path / "ctx.db", master_key=bytes(range(32)))
    aanf = Aanf(store, clock, AanfConfig(context_lifetime_ms=60_000, k_af_lifetime_ms=30_000))
    yield Nef(AfRegistry.from_toml(REGISTRY_TOML), aanf, clock)
    store.close()


@pytest.fixture
def ue() -> UeSimulator:
    return UeSimulator(
        supi="imsi-001010000000001",
        k_ausf=bytes(range(32)),
        realm=REALM,
        gpsi="msisdn-491510000001",
    )


def register(nef: Nef, ue: UeSimulator) -> None:
    assert isinstance(nef.handle("ausf", ue.anchor_key_info()).reply, AnchorKeyRegistered)


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER_NAME]


# ---- registry --------------------------------------------------------------------------------


def test_registry_parses() -> None:
    reg = AfRegistry.from_toml(REGISTRY_TOML)
    assert reg.ausf_identities == {"ausf"}
    af2 = reg.get("af2.example.com")
    assert af2 == AfEntry(
        "af2.example.com",
        AfKind.EXTERNAL,
        frozenset({AF2_ID, make_af_id("af2.example.com", TLS_PROFILE)}),
        100.0,
        100,
    )
    assert reg.owner_of(AF1_ID) == "af1.example.com"
    assert reg.owner_of(make_af_id("af3.example.com", UA_TLS13_SHARED_KEY)) is None
    assert reg.get("nobody.example.com") is None


def test_example_registry_in_infra_loads() -> None:
    reg = AfRegistry.load(REPO_ROOT / "infra" / "af-registry.example.toml")
    assert {"af1.example.com", "af2.example.com"} <= set(reg.afs)
    assert reg.afs["af2.example.com"].kind is AfKind.EXTERNAL


_GOOD_AF = (
    'identity = "af1.example.com"\nkind = "internal"\nrate_per_second = 1\nburst = 1\n'
    'af_ids = [{ fqdn = "af1.example.com", ua_protocol_id = "0100000007" }]\n'
)


@pytest.mark.parametrize(
    "text",
    [
        "not toml [",
        "unknown = 1",
        'ausf_identities = "ausf"',
        "[af]\nidentity = 'x'",  # a table, not an array of tables
        "[[af]]\n" + _GOOD_AF + "colour = 'red'\n",
        "[[af]]\n" + _GOOD_AF.replace('kind = "internal"', 'kind = "partner"'),
        "[[af]]\n" + _GOOD_AF.replace("rate_per_second = 1", "rate_per_second = 0"),
        "[[af]]\n" + _GOOD_AF.replace("rate_per_second = 1", "rate_per_second = true"),
        "[[af]]\n" + _GOOD_AF.replace("burst = 1", "burst = 1.5"),
        "[[af]]\n" + _GOOD_AF.replace("burst = 1", "burst = 0"),
        "[[af]]\n" + _GOOD_AF.replace('identity = "af1.example.com"', 'identity = "AF1"'),
        "[[af]]\n" + _GOOD_AF.replace('"0100000007"', '"01000000"'),
        "[[af]]\n" + _GOOD_AF.replace('"0100000007"', '"zz00000007"'),
        "[[af]]\n" + _GOOD_AF.replace('fqdn = "af1.example.com"', 'fqdn = "Af1.example.com"'),
        "[[af]]\n" + _GOOD_AF.replace("af_ids = [", "af_ids = [] #"),
        "[[af]]\n" + _GOOD_AF + "[[af]]\n" + _GOOD_AF,  # same identity twice
        # One AF_ID listed for two identities.
        "[[af]]\n" + _GOOD_AF + "[[af]]\n" + _GOOD_AF.replace('identity = "af1', 'identity = "af9'),
        'ausf_identities = ["af1.example.com"]\n[[af]]\n' + _GOOD_AF,  # AF posing as AUSF
    ],
)
def test_registry_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        AfRegistry.from_toml(text)


def test_registry_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        AfRegistry.load(tmp_path / "absent.toml")


# ---- token bucket ----------------------------------------------------------------------------


def test_token_bucket() -> None:
    b = TokenBucket(rate_per_second=2.0, burst=3, now_ms=0)
    assert [b.try_take(0) for _ in range(4)] == [True, True, True, False]
    assert b.try_take(499) is False
    assert b.try_take(500) is True  # one token per 500 ms
    assert b.try_take(500) is False
    assert [b.try_take(100_000) for _ in range(4)] == [True, True, True, False]  # capped at burst
    assert b.try_take(50_000) is False  # a clock stepping back mints nothing


# ---- authorisation ---------------------------------------------------------------------------


def test_internal_af_gets_key_and_supi(nef: Nef, ue: UeSimulator) -> None:
    register(nef, ue)
    reply = nef.handle("af1.example.com", AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid)).reply
    assert isinstance(reply, AkmaAfKeyData)
    assert reply.k_af == ue.k_af("af1.example.com", UA_TLS13_SHARED_KEY)
    assert (reply.supi, reply.gpsi) == (ue.supi, None)


def test_external_af_never_sees_supi(nef: Nef, ue: UeSimulator) -> None:
    register(nef, ue)
    for af_id in (AF2_ID, make_af_id("af2.example.com", TLS_PROFILE)):
        reply = nef.handle("af2.example.com", AkmaAfKeyRequest(af_id=af_id, a_kid=ue.a_kid)).reply
        assert isinstance(reply, AkmaAfKeyData)
        assert reply.supi is None and reply.gpsi == ue.gpsi
        assert reply.k_af == ue.k_af("af2.example.com", af_id[-5:])


def test_external_af_without_gpsi_gets_no_identity(nef: Nef) -> None:
    ue = UeSimulator(supi="imsi-001010000000002", k_ausf=bytes(32), realm=REALM)
    register(nef, ue)
    reply = nef.handle("af2.example.com", AkmaAfKeyRequest(af_id=AF2_ID, a_kid=ue.a_kid)).reply
    assert isinstance(reply, AkmaAfKeyData) and reply.supi is None and reply.gpsi is None


def test_anonymous_request_has_no_identity(nef: Nef, ue: UeSimulator) -> None:
    register(nef, ue)
    request = AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid, anon_ind=True)
    assert nef.authorise_key_request("af1.example.com", request).exposure is IdentityExposure.NONE
    reply = nef.handle("af1.example.com", request).reply
    assert isinstance(reply, AkmaAfKeyData) and reply.supi is None and reply.gpsi is None


def test_af_asking_with_another_afs_af_id_is_unauthorized(nef: Nef, ue: UeSimulator) -> None:
    register(nef, ue)
    request = AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid)
    decision = nef.authorise_key_request("af2.example.com", request)
    assert (decision.outcome, decision.reason) == (Outcome.UNAUTHORIZED, "af_id_not_owned")
    assert nef.handle("af2.example.com", request).reply == Rejected(reason="unauthorized")


def test_unknown_requester_is_unauthorized(nef: Nef, ue: UeSimulator) -> None:
    register(nef, ue)
    reply = nef.handle("evil.example.com", AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid)).reply
    assert reply == Rejected(reason="unauthorized")


def test_unknown_and_expired_akid_get_no_content(nef: Nef, ue: UeSimulator, clock: Clock) -> None:
    request = AkmaAfKeyRequest(af_id=AF2_ID, a_kid=ue.a_kid)
    assert nef.handle("af2.example.com", request).reply == KeyNotFound()
    register(nef, ue)
    clock.now += 60_000
    assert nef.handle("af2.example.com", request).reply == KeyNotFound()


def test_malformed_af_id_or_akid_is_invalid_request(nef: Nef, ue: UeSimulator) -> None:
    register(nef, ue)
    bad_af = AkmaAfKeyRequest(af_id=b"-bad.example.com\x01\x00\x00\x00\x07", a_kid=ue.a_kid)
    assert nef.handle("af1.example.com", bad_af).reply == Rejected(reason="invalid_request")
    bad_akid = AkmaAfKeyRequest(af_id=AF1_ID, a_kid="0.00@" + REALM)
    assert nef.handle("af1.example.com", bad_akid).reply == Rejected(reason="invalid_request")


def test_rate_limit_per_identity(nef: Nef, ue: UeSimulator, clock: Clock) -> None:
    register(nef, ue)
    request = AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid)
    replies = [nef.handle("af1.example.com", request).reply for _ in range(4)]
    assert [type(r) for r in replies] == [AkmaAfKeyData] * 3 + [Rejected]
    assert replies[3] == Rejected(reason="rate_limited")
    # Another AF has its own bucket.
    other = AkmaAfKeyRequest(af_id=AF2_ID, a_kid=ue.a_kid)
    assert isinstance(nef.handle("af2.example.com", other).reply, AkmaAfKeyData)
    clock.now += 500
    assert isinstance(nef.handle("af1.example.com", request).reply, AkmaAfKeyData)


def test_only_ausf_may_register_or_remove(nef: Nef, ue: UeSimulator) -> None:
    assert nef.handle("af1.example.com", ue.anchor_key_info()).reply == Rejected(
        reason="unauthorized"
    )
    assert nef.handle("af1.example.com", AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid)).reply == (
        KeyNotFound()
    )
    register(nef, ue)
    refused = nef.handle("af1.example.com", CtxRemove(supi=ue.supi))
    assert refused.reply == Rejected(reason="unauthorized") and refused.notifications == ()
    assert isinstance(
        nef.handle("af1.example.com", AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid)).reply,
        AkmaAfKeyData,
    )


def test_remove_notifies_fetching_afs(nef: Nef, ue: UeSimulator) -> None:
    register(nef, ue)
    nef.handle("af1.example.com", AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid))
    nef.handle("af2.example.com", AkmaAfKeyRequest(af_id=AF2_ID, a_kid=ue.a_kid, anon_ind=True))
    nef.handle("af2.example.com", AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid))  # refused
    result = nef.handle("ausf", CtxRemove(supi=ue.supi))
    assert result.reply == ContextRemoveDone()
    note = ContextRemovedNotification(a_kid=ue.a_kid, reason="removed")
    assert result.notifications == (("af1.example.com", note), ("af2.example.com", note))
    again = nef.handle("ausf", CtxRemove(supi=ue.supi))
    assert again.reply == ContextRemoveDone() and again.notifications == ()


def test_reregistration_notifies_holders_of_old_akid(nef: Nef, ue: UeSimulator) -> None:
    register(nef, ue)
    nef.handle("af1.example.com", AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid))
    new = UeSimulator(supi=ue.supi, k_ausf=bytes(range(1, 33)), realm=REALM)
    result = nef.handle("ausf", new.anchor_key_info())
    assert result.reply == AnchorKeyRegistered(a_kid=new.a_kid)
    assert result.notifications == (
        ("af1.example.com", ContextRemovedNotification(a_kid=ue.a_kid, reason="removed")),
    )


def test_non_request_message_is_refused(nef: Nef) -> None:
    assert nef.handle("af1.example.com", KeyNotFound()).reply == Rejected(reason="invalid_request")


# ---- audit -----------------------------------------------------------------------------------


def test_every_decision_is_audited(
    nef: Nef, ue: UeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER_NAME)
    register(nef, ue)
    nef.handle("af1.example.com", AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid))
    nef.handle("af2.example.com", AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid))
    lines = audit_lines(caplog)
    events = [(line["event"], line["outcome"]) for line in lines]
    assert events == [
        ("anchor_key.register.authorise", "allowed"),
        ("anchor_key.register", "stored"),
        ("af_key.authorise", "allowed"),
        ("af_key.get", "issued"),
        ("af_key.authorise", "unauthorized"),
    ]
    refused = lines[-1]
    assert refused["requester"] == "af2.example.com" and refused["reason"] == "af_id_not_owned"
    assert refused["af_id_fqdn"] == "af1.example.com" and refused["ts_ms"] == T0
    issued = lines[3]
    assert issued["identity"] == "supi" and issued["expiry_ms"] == T0 + 30_000


def test_audit_never_contains_key_material(
    nef: Nef, ue: UeSimulator, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    register(nef, ue)
    keys = [ue.k_ausf, ue.k_akma]
    for requester, af_id, anon in [
        ("af1.example.com", AF1_ID, False),
        ("af2.example.com", AF2_ID, False),
        ("af2.example.com", AF2_ID, True),
        ("af2.example.com", AF1_ID, False),
    ]:
        reply = nef.handle(requester, AkmaAfKeyRequest(af_id=af_id, a_kid=ue.a_kid, anon_ind=anon))
        if isinstance(reply.reply, AkmaAfKeyData):
            keys.append(reply.reply.k_af)
    for _ in range(5):
        nef.handle("af1.example.com", AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid))  # rate limit
    clock.now += 120_000
    nef.handle("af1.example.com", AkmaAfKeyRequest(af_id=AF1_ID, a_kid=ue.a_kid))  # expired
    nef.handle("ausf", CtxRemove(supi=ue.supi))
    assert len(keys) == 5
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert len(audit_lines(caplog)) >= 14
    for key in keys:
        forms = [
            key.hex(),
            key.hex().upper(),
            repr(key),
            base64.b64encode(key).decode(),
            base64.urlsafe_b64encode(key).decode().rstrip("="),
            key.hex()[:16],
        ]
        for form in forms:
            assert form not in text


def test_audit_refuses_key_like_fields_and_bytes() -> None:
    audit = AuditLog(lambda: 0)
    with pytest.raises(ValueError):
        audit.record("x", "y", k_af="00")
    with pytest.raises(ValueError):
        audit.record("x", "y", master_key="00")
    with pytest.raises(ValueError):
        audit.record("x", "y", ts_ms=1)
    with pytest.raises(TypeError):
        audit.record("x", "y", blob=b"\x00")  # type: ignore[arg-type]


def test_audit_line_is_one_json_object(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER_NAME)
    AuditLog(lambda: 42).record("e", "o", a="x\ny", b=1, c=True, d=None)
    (record,) = [r for r in caplog.records if r.name == AUDIT_LOGGER_NAME]
    assert "\n" not in record.getMessage()
    assert json.loads(record.getMessage()) == {
        "ts_ms": 42,
        "event": "e",
        "outcome": "o",
        "a": "x\ny",
        "b": 1,
        "c": True,
    }
