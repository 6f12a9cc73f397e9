"""One signature, one encoding: ECDSA is low-s on seal and on open; Ed25519 S must be canonical."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from broker_adapter import envelope_errors as errors
from broker_adapter.envelope import build_signed_inner, encrypt_inner, open_envelope, signed_bytes
from broker_adapter.suites import SUITES, Suite
from tests.unit.envelope_helpers import (
    NOW_MS,
    POLICY,
    World,
    counter_rng,
    fixed_clock,
    three_party_world,
)

P256_SUITES = sorted(s for s in SUITES if "P256" in s)
ED25519_SUITES = sorted(s for s in SUITES if "ED25519" in s)
# Order of the P-256 group (SEC 2), written out here rather than imported from the code under test.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_HALF_ORDER = P256_ORDER // 2
# Order of the Ed25519 base point (RFC 8032): S and S + L are the same scalar mod L.
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493

WORLD_P256 = three_party_world()
WORLD_ED25519 = three_party_world(af1_alg="ed25519")


def _inner(world: World, suite: Suite) -> bytes:
    inner, _, _ = build_signed_inner(
        suite=suite,
        identity=world.af1.identity,
        recipient=world.network.recipient_key(suite.name),
        msg_type="akma.test",
        body=b"body",
        correlation_id=None,
        clock=fixed_clock(),
        rng=counter_rng(),
    )
    return inner


def _open(world: World, suite: Suite, inner: bytes) -> object:
    data = encrypt_inner(
        inner,
        suite=suite,
        sender=world.af1.name,
        recipient=world.network.recipient_key(suite.name),
        rng=counter_rng(1000),
        now_ms=NOW_MS,
    )
    return open_envelope(
        data, me=world.network.identity, trust=world.trust, now_ms=NOW_MS, policy=POLICY
    )


def _with_signature(inner: bytes, signature: bytes) -> bytes:
    return inner[: -len(signature)] + signature


def _signed(inner: bytes, suite: Suite) -> bytes:
    return signed_bytes(suite.name, msgpack.unpackb(inner)[:10])


@pytest.mark.parametrize("suite_name", P256_SUITES)
def test_high_s_twin_of_a_valid_signature_is_refused(suite_name: str) -> None:
    suite = SUITES[suite_name]
    inner = _inner(WORLD_P256, suite)
    assert _open(WORLD_P256, suite, inner)  # the genuine message opens
    sig = inner[-64:]
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    twin = r.to_bytes(32, "big") + (P256_ORDER - s).to_bytes(32, "big")
    # The twin is a mathematically valid ECDSA signature of the same bytes ...
    public = WORLD_P256.af1.sign_cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(
        encode_dss_signature(r, P256_ORDER - s),
        _signed(inner, suite),
        ec.ECDSA(hashes.SHA256()),
    )
    # ... and yet it must not open: otherwise one message has two valid encodings.
    with pytest.raises(errors.BadSignatureError) as info:
        _open(WORLD_P256, suite, _with_signature(inner, twin))
    assert info.value.code == "bad_signature"


def test_verify_refuses_high_s_directly() -> None:
    suite = SUITES[P256_SUITES[0]]
    key = ec.generate_private_key(ec.SECP256R1())
    for i in range(64):
        data = i.to_bytes(2, "big")
        sig = suite.sign(key, data)
        s = int.from_bytes(sig[32:], "big")
        assert s <= P256_HALF_ORDER
        suite.verify(key.public_key(), sig, data)
        high = sig[:32] + (P256_ORDER - s).to_bytes(32, "big")
        with pytest.raises(errors.BadSignatureError):
            suite.verify(key.public_key(), high, data)


@pytest.mark.parametrize("suite_name", ED25519_SUITES)
def test_ed25519_non_canonical_s_is_refused(suite_name: str) -> None:
    suite = SUITES[suite_name]
    inner = _inner(WORLD_ED25519, suite)
    assert _open(WORLD_ED25519, suite, inner)
    sig = inner[-64:]
    s = int.from_bytes(sig[32:], "little")
    twin = sig[:32] + (s + ED25519_ORDER).to_bytes(32, "little")
    public = WORLD_ED25519.af1.sign_cert.public_key()
    # cryptography (OpenSSL) enforces S < L, so S + L is no second encoding.
    with pytest.raises(InvalidSignature):
        public.verify(twin, _signed(inner, suite))  # type: ignore[union-attr,call-arg]
    with pytest.raises(errors.BadSignatureError):
        _open(WORLD_ED25519, suite, _with_signature(inner, twin))
