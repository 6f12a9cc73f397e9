"""Generate tests/vectors/envelope-kat.json: one known-answer vector per envelope suite.

Run from the repository root:  .venv/bin/python -m tests.vectors.make_envelope_kat

Everything that can be fixed is fixed: every key is derived from a constant seed, the CA signs
certificates and the CRL with deterministic ECDSA (RFC 6979), serial numbers and dates are
constants, the clock is a constant and the "random" message id is a constant. So the
certificates, the signed inner message and its signature are reproducible byte for byte, and
the test rebuilds them and compares.

The one thing that cannot be fixed is the HPKE ephemeral key: ``cryptography``'s single-shot
HPKE API draws it internally and accepts no randomness. Each run therefore produces a different
``envelope``. The stored envelope is a fixed *input*: the test checks that it opens, with the
stored keys at the stored time, to exactly the stored inner message and fields.

Epoch suites (``*-E``) take the epoch key K and the per-message nonce from the injected random
source, so there the AES-256-GCM part (K, nonce, aad, ciphertext) is reproducible byte for
byte; only the HPKE-wrapped K in the envelope is not.
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
from cryptography import x509
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from broker_adapter.envelope import (
    build_signed_inner,
    encrypt_inner,
    epoch_aad,
    hpke_info,
    signed_bytes,
)
from broker_adapter.identity import LocalIdentity, RecipientKey, kid_of
from broker_adapter.suites import SUITES, KemPrivateKey, KeyMode, SigningPrivateKey

OUT = Path(__file__).with_name("envelope-kat.json")

# Fixed instants: certificates valid 2025-2035, message sealed at 2026-01-15T12:00:00Z.
NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2035, 1, 1, tzinfo=UTC)
CRL_UPDATE = datetime(2026, 1, 1, tzinfo=UTC)
CRL_NEXT = datetime(2036, 1, 1, tzinfo=UTC)
NOW_MS = int(datetime(2026, 1, 15, 12, 0, tzinfo=UTC).timestamp() * 1000)
MSG_ID = bytes(range(16))
CORRELATION_ID = bytes(range(16, 32))
SENDER = "af1.example.com"
RECIPIENT = "network"
MLKEM_OID = x509.ObjectIdentifier("1.3.6.1.4.1.32473.1.1")


def _seed(label: str, size: int = 32) -> bytes:
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"akma-envelope-kat/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def _p256(label: str) -> ec.EllipticCurvePrivateKey:
    # Reducing a 256-bit hash modulo the group order is fine for test keys.
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    return ec.derive_private_key(int.from_bytes(_seed(label), "big") % order, ec.SECP256R1())


class FixedKeys:
    def __init__(self) -> None:
        self.ca = _p256("ca")
        self.sign_p256 = _p256("sender-sign-p256")
        self.sign_ed25519 = ed25519.Ed25519PrivateKey.from_private_bytes(_seed("sender-ed25519"))
        self.enc_x25519 = x25519.X25519PrivateKey.from_private_bytes(_seed("recipient-x25519"))
        self.pq_mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(_seed("recipient-mlkem", 64))
        self.pq_x25519 = x25519.X25519PrivateKey.from_private_bytes(_seed("recipient-pq-x25519"))
        self.pq = hpke.MLKEM768X25519PrivateKey(self.pq_mlkem, self.pq_x25519)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ku(*, sign: bool = False, agree: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(sign, False, False, False, agree, ca, ca, False, False)


def _octet_string(data: bytes) -> bytes:
    return b"\x04\x82" + len(data).to_bytes(2, "big") + data


def build_certificates(keys: FixedKeys) -> dict[str, x509.Certificate]:
    ca_pub = keys.ca.public_key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("KAT CA"))
        .issuer_name(_name("KAT CA"))
        .public_key(ca_pub)
        .serial_number(1)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ku(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_pub), critical=False)
        .sign(keys.ca, hashes.SHA256(), ecdsa_deterministic=True)
    )

    def leaf(
        serial: int,
        cn: str,
        public_key: Any,
        ku: x509.KeyUsage,
        extra: x509.UnrecognizedExtension | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(NOT_BEFORE)
            .not_valid_after(NOT_AFTER - timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_pub), critical=False
            )
            .add_extension(ku, critical=True)
        )
        if extra is not None:
            builder = builder.add_extension(extra, critical=False)
        return builder.sign(keys.ca, hashes.SHA256(), ecdsa_deterministic=True)

    mlkem_pub = keys.pq_mlkem.public_key().public_bytes_raw()
    return {
        "ca": ca,
        "sender_sign_p256": leaf(2, SENDER, keys.sign_p256.public_key(), _ku(sign=True)),
        "sender_sign_ed25519": leaf(3, SENDER, keys.sign_ed25519.public_key(), _ku(sign=True)),
        "recipient_enc": leaf(4, RECIPIENT, keys.enc_x25519.public_key(), _ku(agree=True)),
        "recipient_enc_pq": leaf(
            5,
            RECIPIENT,
            keys.pq_x25519.public_key(),
            _ku(agree=True),
            x509.UnrecognizedExtension(MLKEM_OID, _octet_string(mlkem_pub)),
        ),
    }


def build_crl(keys: FixedKeys, ca: x509.Certificate) -> x509.CertificateRevocationList:
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(CRL_UPDATE)
        .next_update(CRL_NEXT)
        .sign(keys.ca, hashes.SHA256(), ecdsa_deterministic=True)
    )


def case_inputs(
    keys: FixedKeys, certs: dict[str, x509.Certificate], suite_name: str
) -> tuple[LocalIdentity, RecipientKey, KemPrivateKey]:
    suite = SUITES[suite_name]
    sign_key: SigningPrivateKey
    if suite.signature.value == "ed25519":
        sign_key, sign_cert = keys.sign_ed25519, certs["sender_sign_ed25519"]
    else:
        sign_key, sign_cert = keys.sign_p256, certs["sender_sign_p256"]
    if suite.kem.value == "x25519":
        enc_cert, enc_key = certs["recipient_enc"], keys.enc_x25519
        recipient = RecipientKey(RECIPIENT, kid_of(enc_cert), enc_key.public_key())
        private: KemPrivateKey = enc_key
    else:
        enc_cert = certs["recipient_enc_pq"]
        recipient = RecipientKey(RECIPIENT, kid_of(enc_cert), keys.pq.public_key())
        private = keys.pq
    sender = LocalIdentity(SENDER, sign_key, kid_of(sign_cert))
    return sender, recipient, private


MSG_TYPE = "akma.kat"
BODY = b"known answer body \x00\x01\xfe\xff"


def inner_for(sender: LocalIdentity, recipient: RecipientKey, suite_name: str) -> bytes:
    inner, _, _ = build_signed_inner(
        suite=SUITES[suite_name],
        identity=sender,
        recipient=recipient,
        msg_type=MSG_TYPE,
        body=BODY,
        correlation_id=CORRELATION_ID,
        clock=lambda: NOW_MS,
        rng=lambda n: MSG_ID,
    )
    return inner


EPOCH_KEY = hashlib.sha256(b"akma-envelope-kat/epoch-key").digest()
EPOCH_NONCE = hashlib.sha256(b"akma-envelope-kat/epoch-nonce").digest()[:12]


def epoch_rng(n: int) -> bytes:
    """The injected randomness of an epoch seal: K (32 bytes) first, then the nonce (12)."""
    return {32: EPOCH_KEY, 12: EPOCH_NONCE}[n]


def epoch_ciphertext(suite_name: str, recipient: RecipientKey, inner: bytes) -> bytes:
    """The AES-256-GCM part of an epoch envelope, from the documented rule."""
    aad = epoch_aad(suite_name, SENDER, RECIPIENT, recipient.kid)
    return AESGCM(EPOCH_KEY).encrypt(EPOCH_NONCE, inner, aad)


def main() -> int:
    keys = FixedKeys()
    certs = build_certificates(keys)
    crl = build_crl(keys, certs["ca"])
    pem = {k: c.public_bytes(serialization.Encoding.PEM).decode() for k, c in certs.items()}
    cases = []
    for suite_name in sorted(SUITES):
        suite = SUITES[suite_name]
        sender, recipient, _ = case_inputs(keys, certs, suite_name)
        inner = inner_for(sender, recipient, suite_name)
        fields = msgpack.unpackb(inner)
        info = hpke_info(suite_name, SENDER, RECIPIENT, recipient.kid)
        envelope = encrypt_inner(
            inner, suite=suite, sender=SENDER, recipient=recipient, rng=epoch_rng, now_ms=NOW_MS
        )
        extra: dict[str, str] = {}
        if suite.mode is KeyMode.EPOCH:
            outer = msgpack.unpackb(envelope)
            assert outer[6] == epoch_ciphertext(suite_name, recipient, inner)
            extra = {
                "epoch_key": EPOCH_KEY.hex(),
                "nonce": EPOCH_NONCE.hex(),
                "aad": epoch_aad(suite_name, SENDER, RECIPIENT, recipient.kid).hex(),
                "ciphertext": outer[6].hex(),
                "wrapped_key": outer[4].hex(),
            }
        cases.append(
            {
                "mode": suite.mode.value,
                "suite": suite_name,
                "signed_bytes": signed_bytes(suite_name, fields[:10]).hex(),
                "signature": fields[10].hex(),
                "inner": inner.hex(),
                "hpke_info": info.hex(),
                "recipient_kid": recipient.kid.hex(),
                "signer_kid": sender.signing_kid.hex(),
                "envelope": envelope.hex(),
                "envelope_sha256": hashlib.sha256(envelope).hexdigest(),
                **extra,
            }
        )
    document = {
        "provenance": (
            "Generated by tests/vectors/make_envelope_kat.py (custom vectors: no official "
            "vectors exist for this format). Keys derive from SHA-256 of fixed labels; the CA "
            "signs with RFC 6979 deterministic ECDSA; clock and message id are constants. "
            "Reproducible byte for byte: certificates, CRL, signed_bytes, signature, inner, "
            "hpke_info; for epoch suites (-E) also epoch_key, nonce, aad and ciphertext (K and "
            "the nonce come from the injected rng). NOT reproducible: envelope (and an epoch "
            "suite's wrapped_key), because cryptography's HPKE draws its ephemeral key "
            "internally and accepts no injected randomness; the stored envelope is a fixed "
            "input that must open to exactly the stored inner message."
        ),
        "generator": "tests/vectors/make_envelope_kat.py",
        "now_ms": NOW_MS,
        "sender": SENDER,
        "recipient": RECIPIENT,
        "msg_type": MSG_TYPE,
        "body": BODY.hex(),
        "msg_id": MSG_ID.hex(),
        "correlation_id": CORRELATION_ID.hex(),
        "certificates": pem,
        "crl": crl.public_bytes(serialization.Encoding.PEM).decode(),
        "cases": cases,
    }
    OUT.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {OUT} ({len(cases)} suites)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
