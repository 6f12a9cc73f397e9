"""Known-answer vectors (tests/vectors/envelope-kat.json), one per suite (epoch variants too).

Three kinds of check: the generator still reproduces the deterministic bytes (certificates, CRL,
signed bytes, signature, inner message); the stored envelope opens to exactly the stored
content; and the signature is checked again by hand (plain msgpack and ``cryptography``,
without the envelope module) so that a bug shared by seal and open cannot hide.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker_adapter.envelope import EnvelopePolicy, open_envelope
from broker_adapter.identity import LocalIdentity
from broker_adapter.suites import DEFAULT_SUITE_NAME, SUITES
from broker_adapter.trust import TrustMaterial, TrustStore
from tests.vectors import make_envelope_kat as gen

KAT: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "envelope-kat.json").read_text()
)
CASES = {case["suite"]: case for case in KAT["cases"]}
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def test_every_suite_has_a_vector() -> None:
    assert set(CASES) == set(SUITES)


def test_generator_reproduces_certificates_and_crl() -> None:
    keys = gen.FixedKeys()
    certs = gen.build_certificates(keys)
    for name, cert in certs.items():
        assert cert.public_bytes(serialization.Encoding.PEM).decode() == KAT["certificates"][name]
    crl = gen.build_crl(keys, certs["ca"])
    assert crl.public_bytes(serialization.Encoding.PEM).decode() == KAT["crl"]


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_inner_message_is_reproduced_exactly(suite: str) -> None:
    keys = gen.FixedKeys()
    certs = gen.build_certificates(keys)
    sender, recipient, _ = gen.case_inputs(keys, certs, suite)
    assert gen.inner_for(sender, recipient, suite).hex() == CASES[suite]["inner"]


def _trust() -> TrustStore:
    certs = {k: x509.load_pem_x509_certificate(v.encode()) for k, v in KAT["certificates"].items()}
    return TrustStore.from_material(
        TrustMaterial(
            anchors=(certs.pop("ca"),),
            crls=(x509.load_pem_x509_crl(KAT["crl"].encode()),),
            certificates=tuple(certs.values()),
        )
    )


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_stored_envelope_opens_to_the_stored_content(suite: str) -> None:
    case = CASES[suite]
    keys = gen.FixedKeys()
    certs = gen.build_certificates(keys)
    _, _, private = gen.case_inputs(keys, certs, suite)
    me = LocalIdentity(
        KAT["recipient"],
        keys.sign_p256,
        b"\x00" * 32,
        {bytes.fromhex(case["recipient_kid"]): private},
    )
    data = bytes.fromhex(case["envelope"])
    opened = open_envelope(
        data,
        me=me,
        trust=_trust(),
        now_ms=KAT["now_ms"],
        policy=EnvelopePolicy(allowed_suites=frozenset(SUITES)),
        broker_user_id=KAT["sender"],
        expected_correlation_id=bytes.fromhex(KAT["correlation_id"]),
    )
    assert opened.body.hex() == KAT["body"]
    assert opened.msg_id.hex() == KAT["msg_id"]
    assert opened.timestamp_ms == KAT["now_ms"]
    assert opened.msg_type == KAT["msg_type"]
    assert (opened.sender, opened.recipient, opened.suite) == (
        KAT["sender"],
        KAT["recipient"],
        suite,
    )
    assert opened.signer_kid.hex() == case["signer_kid"]
    assert opened.digest.hex() == case["envelope_sha256"]
    # The ciphertext carries exactly the stored inner bytes.
    outer = msgpack.unpackb(data)
    inner = SUITES[suite].hpke_open(private, outer[4], bytes.fromhex(case["hpke_info"]))
    if case["mode"] == "epoch":
        # An epoch envelope's HPKE payload is the epoch key; the inner is under AES-256-GCM.
        assert inner.hex() == case["epoch_key"]
        inner = AESGCM(inner).decrypt(outer[5], outer[6], bytes.fromhex(case["aad"]))
    assert inner.hex() == case["inner"]


EPOCH_CASES = sorted(name for name, case in CASES.items() if case["mode"] == "epoch")


def test_the_default_suite_has_an_epoch_vector() -> None:
    assert DEFAULT_SUITE_NAME in EPOCH_CASES and len(EPOCH_CASES) == 3


@pytest.mark.parametrize("suite", EPOCH_CASES)
def test_epoch_aes_gcm_part_is_reproduced_exactly(suite: str) -> None:
    case = CASES[suite]
    keys = gen.FixedKeys()
    _, recipient, _ = gen.case_inputs(keys, gen.build_certificates(keys), suite)
    inner = bytes.fromhex(case["inner"])
    assert gen.epoch_ciphertext(suite, recipient, inner).hex() == case["ciphertext"]
    # Independently of the envelope module: the aad from the documented rule, plain AES-GCM.
    aad = msgpack.packb(
        ["AKMA-ENVELOPE-AEAD", 1, suite, KAT["sender"], KAT["recipient"], recipient.kid],
        use_bin_type=True,
    )
    assert aad.hex() == case["aad"]
    key, nonce = bytes.fromhex(case["epoch_key"]), bytes.fromhex(case["nonce"])
    assert AESGCM(key).encrypt(nonce, inner, aad).hex() == case["ciphertext"]
    outer = msgpack.unpackb(bytes.fromhex(case["envelope"]))
    assert [outer[4].hex(), outer[5].hex(), outer[6].hex()] == [
        case["wrapped_key"],
        case["nonce"],
        case["ciphertext"],
    ]


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_signature_checked_independently(suite: str) -> None:
    case = CASES[suite]
    inner = msgpack.unpackb(bytes.fromhex(case["inner"]))
    assert len(inner) == 11
    # Rebuild the signed bytes from the documented rule: [label, suite, *inner[0:10]].
    tbs = msgpack.packb(["AKMA-ENVELOPE-SIG", suite, *inner[:10]], use_bin_type=True)
    assert tbs.hex() == case["signed_bytes"]
    signature = inner[10]
    name = "sender_sign_ed25519" if "ED25519" in suite else "sender_sign_p256"
    public_key = x509.load_pem_x509_certificate(KAT["certificates"][name].encode()).public_key()
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, tbs)
    else:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        # Low-s: the envelope refuses the (r, n - s) twin of a signature.
        assert int.from_bytes(signature[32:], "big") <= P256_ORDER // 2
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        public_key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))
    # And the HPKE info from the documented rule.
    info = msgpack.packb(
        [
            "AKMA-ENVELOPE-HPKE",
            1,
            suite,
            KAT["sender"],
            KAT["recipient"],
            bytes.fromhex(case["recipient_kid"]),
        ],
        use_bin_type=True,
    )
    assert info.hex() == case["hpke_info"]
