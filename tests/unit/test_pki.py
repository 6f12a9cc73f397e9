"""Dev PKI: layout, file modes, idempotence, chains, key usages, hybrid keys, revocation.

Also the broker definitions generated from a PKI (users, permissions, password hash), since
they are derived from the same party list.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from akma_contract.topology import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    NETWORK_REQUEST_QUEUE,
    REPLY_EXCHANGE,
    REQUEST_EXCHANGE,
    inbox_queue,
)
from infra.definitions import build_definitions, rabbit_password_hash
from infra.errors import InvalidIdentityError, PkiError
from infra.pki import (
    MLKEM_EXTENSION_OID,
    PkiLayout,
    build_crl,
    create_ca,
    ensure_dev_pki,
    hybrid_public_key_from_cert,
    issue_cert,
    kid,
    load_certificate,
    load_crl,
    load_hybrid_private_key,
    load_private_key,
    load_signing_key,
    mlkem_public_key_from_cert,
    revoke,
)

AFS = ("af1.example.com", "af2.example.com")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PURPOSE_FILES = ("tls", "sign", "enc", "enc-pq")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    return ensure_dev_pki(tmp_path_factory.mktemp("pki"), afs=AFS, now=NOW)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _spki(key: object) -> bytes:
    assert hasattr(key, "public_bytes")
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


# ---- layout and modes ------------------------------------------------------------------------


def test_layout_matches_the_architecture_doc(layout: PkiLayout) -> None:
    expected = {"ca/ca.crt", "ca/ca.key", "ca/crl.pem", "broker/server.crt", "broker/server.key"}
    expected.add("admin-password")
    for party in ("network", *AFS):
        for name in PURPOSE_FILES:
            expected |= {f"parties/{party}/{name}.crt", f"parties/{party}/{name}.key"}
    assert set(_snapshot(layout.root)) == expected
    assert layout.parties == ("network", *AFS)


def test_private_material_is_owner_only(layout: PkiLayout) -> None:
    for path in layout.root.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.suffix == ".key" or path.name == "admin-password":
            assert mode == 0o600, path
        else:
            assert mode & 0o022 == 0, path  # certificates and the CRL: public, but not writable


def test_private_keys_are_pkcs8_pem(layout: PkiLayout) -> None:
    for path in layout.root.rglob("*.key"):
        text = path.read_text()
        assert text.startswith("-----BEGIN PRIVATE KEY-----\n"), path
        assert "RSA" not in text and "EC PRIVATE" not in text


def test_admin_password_is_random_and_long(layout: PkiLayout) -> None:
    password = layout.admin_password()
    assert len(password) >= 40
    assert re.fullmatch(r"[A-Za-z0-9_-]+", password)


# ---- idempotence -----------------------------------------------------------------------------


def test_rerun_keeps_everything_byte_for_byte(tmp_path: Path) -> None:
    ensure_dev_pki(tmp_path, afs=AFS, now=NOW)
    before = _snapshot(tmp_path)
    ensure_dev_pki(tmp_path, afs=AFS, now=NOW + timedelta(days=1))
    assert _snapshot(tmp_path) == before


def test_rerun_adds_missing_parties_and_keeps_existing_ones(tmp_path: Path) -> None:
    ensure_dev_pki(tmp_path, afs=AFS[:1], now=NOW)
    before = _snapshot(tmp_path)
    layout = ensure_dev_pki(tmp_path, afs=AFS, now=NOW)
    after = _snapshot(tmp_path)
    assert {k: after[k] for k in before} == before
    assert layout.party(AFS[1]).tls_cert.exists()


def test_missing_or_mismatched_files_are_replaced(tmp_path: Path) -> None:
    layout = ensure_dev_pki(tmp_path, afs=AFS, now=NOW)
    paths = layout.party(AFS[0])
    paths.enc_key.unlink()
    # A key that does not belong to its certificate must not be kept.
    paths.tls_key.write_bytes(layout.party(AFS[1]).tls_key.read_bytes())
    ensure_dev_pki(tmp_path, afs=AFS, now=NOW)
    for name in ("tls", "enc"):
        cert = load_certificate(paths.directory / f"{name}.crt")
        key = load_private_key(paths.directory / f"{name}.key")
        assert _spki(cert.public_key()) == _spki(key.public_key())


def test_certificates_close_to_expiry_are_renewed(tmp_path: Path) -> None:
    layout = ensure_dev_pki(tmp_path, afs=AFS, now=NOW)
    old = load_certificate(layout.party(AFS[0]).tls_cert)
    later = old.not_valid_after_utc - timedelta(days=10)
    ensure_dev_pki(tmp_path, afs=AFS, now=later)
    new = load_certificate(layout.party(AFS[0]).tls_cert)
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc > later + timedelta(days=300)


def test_sign_algorithm_can_be_switched_to_ed25519(tmp_path: Path) -> None:
    layout = ensure_dev_pki(tmp_path, afs=AFS, now=NOW)
    assert isinstance(
        load_signing_key(layout.party("network").sign_key), ec.EllipticCurvePrivateKey
    )
    ensure_dev_pki(tmp_path, afs=AFS, now=NOW, sign_alg="ed25519")
    assert isinstance(load_signing_key(layout.party("network").sign_key), ed25519.Ed25519PrivateKey)
    cert = load_certificate(layout.party("network").sign_cert)
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)


@pytest.mark.parametrize("bad", ["../evil", "Upper.example.com", "a/b", "", "-x.example.com"])
def test_unusable_party_names_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidIdentityError):
        ensure_dev_pki(tmp_path, afs=[bad], now=NOW)


# ---- chains and key usages ---------------------------------------------------------------------


def _store(layout: PkiLayout) -> Store:
    return Store([load_certificate(layout.ca_cert)])


@pytest.mark.parametrize("party", ["network", *AFS])
def test_tls_client_certificates_verify_as_client_certificates(
    layout: PkiLayout, party: str
) -> None:
    verifier = PolicyBuilder().store(_store(layout)).time(NOW).build_client_verifier()
    verified = verifier.verify(load_certificate(layout.party(party).tls_cert), [])
    assert verified.subjects == [x509.DNSName(party)]
    cert = verified.chain[0]
    assert cert.subject.rfc4514_string() == f"CN={party}"
    assert cert.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    ).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])


def test_a_certificate_from_another_ca_does_not_verify(layout: PkiLayout, tmp_path: Path) -> None:
    foreign = ensure_dev_pki(tmp_path, afs=AFS, now=NOW)
    verifier = PolicyBuilder().store(_store(layout)).time(NOW).build_client_verifier()
    with pytest.raises(VerificationError):
        verifier.verify(load_certificate(foreign.party(AFS[0]).tls_cert), [])


@pytest.mark.parametrize(
    "name", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
)
def test_server_certificate_verifies_for_localhost_and_loopback(
    layout: PkiLayout, name: x509.DNSName | x509.IPAddress
) -> None:
    verifier = PolicyBuilder().store(_store(layout)).time(NOW).build_server_verifier(name)
    chain = verifier.verify(load_certificate(layout.server_cert), [])
    assert chain[-1] == load_certificate(layout.ca_cert)


def test_expired_client_certificate_does_not_verify(layout: PkiLayout) -> None:
    cert = load_certificate(layout.party(AFS[0]).tls_cert)
    verifier = (
        PolicyBuilder()
        .store(_store(layout))
        .time(cert.not_valid_after_utc + timedelta(seconds=1))
        .build_client_verifier()
    )
    with pytest.raises(VerificationError):
        verifier.verify(cert, [])


def _usage(cert: x509.Certificate) -> x509.KeyUsage:
    ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ext.critical
    return ext.value


def test_each_purpose_has_only_its_key_usage(layout: PkiLayout) -> None:
    paths = layout.party(AFS[0])
    tls = _usage(load_certificate(paths.tls_cert))
    sign = _usage(load_certificate(paths.sign_cert))
    assert tls.digital_signature and not tls.key_agreement and not tls.key_cert_sign
    assert sign.digital_signature and not sign.key_agreement and not sign.key_encipherment
    for cert_path in (paths.enc_cert, paths.enc_pq_cert):
        cert = load_certificate(cert_path)
        usage = _usage(cert)
        assert usage.key_agreement and not usage.digital_signature
        assert isinstance(cert.public_key(), x25519.X25519PublicKey)
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    for cert_path in (paths.sign_cert, paths.enc_cert, paths.enc_pq_cert, paths.tls_cert):
        bc = load_certificate(cert_path).extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and not bc.value.ca
    ca = load_certificate(layout.ca_cert)
    assert _usage(ca).key_cert_sign and _usage(ca).crl_sign
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_kid_is_sha256_of_der(layout: PkiLayout) -> None:
    cert = load_certificate(layout.party("network").sign_cert)
    assert kid(cert) == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    assert kid(cert) != kid(load_certificate(layout.party("network").enc_cert))


# ---- hybrid ML-KEM-768 + X25519 ----------------------------------------------------------------


def test_hybrid_key_round_trips_through_hpke(layout: PkiLayout) -> None:
    paths = layout.party(AFS[1])
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    public = hybrid_public_key_from_cert(load_certificate(paths.enc_pq_cert))
    sealed = suite.encrypt(b"K_AF", public, info=b"test")
    assert suite.decrypt(sealed, load_hybrid_private_key(paths.enc_pq_key), info=b"test") == b"K_AF"
    # Another party's hybrid key cannot open it.
    other = load_hybrid_private_key(layout.party(AFS[0]).enc_pq_key)
    with pytest.raises(Exception):  # noqa: B017 - cryptography raises a generic error here
        suite.decrypt(sealed, other, info=b"test")


def test_hybrid_key_file_is_two_pkcs8_blocks(layout: PkiLayout) -> None:
    text = layout.party("network").enc_pq_key.read_text()
    assert text.count("-----BEGIN PRIVATE KEY-----") == 2
    with pytest.raises(PkiError):
        load_hybrid_private_key(layout.party("network").enc_key)  # a single X25519 block


def test_mlkem_public_key_is_authenticated_by_the_ca_signature(layout: PkiLayout) -> None:
    ca = load_certificate(layout.ca_cert)
    cert = load_certificate(layout.party("network").enc_pq_cert)
    raw = mlkem_public_key_from_cert(cert)
    assert len(raw) == 1184
    ext = cert.extensions.get_extension_for_oid(MLKEM_EXTENSION_OID)
    assert not ext.critical
    # Flip one byte of the ML-KEM key inside the DER: the CA signature no longer matches.
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    where = bytes(der).find(raw)
    der[where + 100] ^= 0x01
    tampered = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(InvalidSignature):
        tampered.verify_directly_issued_by(ca)


def test_non_pq_certificate_has_no_mlkem_key(layout: PkiLayout) -> None:
    with pytest.raises(PkiError):
        mlkem_public_key_from_cert(load_certificate(layout.party("network").enc_cert))


def test_issue_cert_checks_its_inputs() -> None:
    ca_cert, ca_key = create_ca("test CA", now=NOW)
    x_pub = x25519.X25519PrivateKey.generate().public_key()
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(PkiError):
        issue_cert(
            ca_cert, ca_key, identity="a.example", purpose="enc-pq", public_key=x_pub, now=NOW
        )
    with pytest.raises(PkiError):
        issue_cert(ca_cert, ca_key, identity="a.example", purpose="enc", public_key=ec_pub, now=NOW)
    cert = issue_cert(
        ca_cert,
        ca_key,
        identity="a.example",
        purpose="sign",
        public_key=ec_pub,
        now=NOW,
        not_before=NOW - timedelta(days=2),
        not_after=NOW - timedelta(days=1),
    )
    assert cert.not_valid_after_utc == NOW - timedelta(days=1)


# ---- revocation ----------------------------------------------------------------------------


def test_crl_lists_revoked_serials_and_is_signed_by_the_ca() -> None:
    ca_cert, ca_key = create_ca("test CA", now=NOW)
    crl = build_crl(ca_cert, ca_key, [7, 9, 7], now=NOW)
    assert sorted(r.serial_number for r in crl) == [7, 9]
    assert crl.is_signature_valid(ca_key.public_key())


def test_revoke_updates_the_crl_and_the_next_run_reissues(tmp_path: Path) -> None:
    layout = ensure_dev_pki(tmp_path, afs=AFS, now=NOW)
    assert len(load_crl(layout.crl)) == 0
    victim = load_certificate(layout.party(AFS[0]).sign_cert)
    revoke(tmp_path, victim, now=NOW)
    crl = load_crl(layout.crl)
    assert crl.get_revoked_certificate_by_serial_number(victim.serial_number) is not None
    assert crl.is_signature_valid(load_certificate(layout.ca_cert).public_key())  # type: ignore[arg-type]
    revoke(tmp_path, 12345, now=NOW)
    assert {r.serial_number for r in load_crl(layout.crl)} == {victim.serial_number, 12345}
    ensure_dev_pki(tmp_path, afs=AFS, now=NOW)
    replacement = load_certificate(layout.party(AFS[0]).sign_cert)
    assert replacement.serial_number != victim.serial_number
    # Revocations survive the re-run.
    assert len(load_crl(layout.crl)) == 2


# ---- broker definitions from the same party list ---------------------------------------------


def test_rabbit_password_hash_follows_the_sha256_scheme() -> None:
    salt = b"\x90\x8d\xc6\x0a"
    stored = base64.b64decode(rabbit_password_hash("s3cret", salt))
    assert stored[:4] == salt
    assert stored[4:] == hashlib.sha256(salt + b"s3cret").digest()


def test_definitions_give_each_party_only_its_own_names() -> None:
    doc = build_definitions(
        network="network",
        afs=list(AFS),
        admin_password="pw",  # noqa: S106 - a test value
        salt=b"\x00\x01\x02\x03",
    )
    users = {u["name"]: u for u in doc["users"]}
    assert users["network"]["password_hash"] == "" and users[AFS[0]]["password_hash"] == ""
    assert users["admin"]["tags"] == ["administrator"] and users["admin"]["password_hash"]
    perms = {p["user"]: p for p in doc["permissions"]}
    af = perms[AFS[0]]
    assert af["configure"] == af["read"] == r"^af\.af1\.example\.com\."
    assert re.search(af["read"], inbox_queue(AFS[0]))
    assert not re.search(af["read"], inbox_queue(AFS[1]))
    assert not re.search(af["read"], "af.af1Xexample.com.inbox")  # dots are escaped
    assert re.search(af["write"], REQUEST_EXCHANGE) and not re.search(af["write"], REPLY_EXCHANGE)
    assert perms["network"]["configure"] == "^$"
    assert {q["name"] for q in doc["queues"]} == {
        NETWORK_REQUEST_QUEUE,
        inbox_queue(AFS[0]),
        inbox_queue(AFS[1]),
        DEAD_LETTER_QUEUE,
    }
    assert all(q["arguments"] == {"x-queue-type": "quorum"} for q in doc["queues"])
    assert doc["policies"][0]["definition"] == {
        "delivery-limit": 5,
        "dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    }
