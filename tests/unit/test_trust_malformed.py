"""Malformed trust material is a TrustStoreError naming the file, never a cryptography crash.

cryptography parses extensions lazily, so a certificate with a duplicated extension or a
malformed authorityKeyIdentifier loads fine and only raises when its extensions are read.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from broker_adapter import envelope_errors as errors
from broker_adapter.identity import kid_of
from broker_adapter.trust import TrustMaterial, TrustStore
from infra import pki
from tests.unit.envelope_helpers import NOW, NOW_MS, SIGN_USAGE, TestPki

# Same encoded length as subjectAltName (2.5.29.17), so the DER can be patched in place.
_PLACEHOLDER_OID = x509.ObjectIdentifier("2.5.29.99")


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _resign(
    cert: x509.Certificate, tbs: bytes, ca_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    """``cert`` with its TBS replaced by ``tbs``, validly signed again by ``ca_key``."""
    der = cert.public_bytes(serialization.Encoding.DER)
    old_tbs = cert.tbs_certificate_bytes
    rest = der[der.index(old_tbs) + len(old_tbs) :]
    algorithm = rest[: 2 + rest[1]]  # the AlgorithmIdentifier SEQUENCE, short-form length
    signature = ca_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return x509.load_der_x509_certificate(
        _tlv(0x30, tbs + algorithm + _tlv(0x03, b"\x00" + signature))
    )


def _builder(
    ca_cert: x509.Certificate, name: str, extra: list[x509.ExtensionType]
) -> x509.CertificateBuilder:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(SIGN_USAGE, critical=True)
    )
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder


def duplicate_san_cert(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str
) -> x509.Certificate:
    """A CA-signed certificate carrying subjectAltName twice (the builder refuses that)."""
    san = x509.SubjectAlternativeName([x509.DNSName(name)])
    placeholder = x509.UnrecognizedExtension(_PLACEHOLDER_OID, san.public_bytes())
    cert = _builder(ca_cert, name, [placeholder]).sign(ca_key, hashes.SHA256())
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(b"\x06\x03\x55\x1d\x63") == 1
    dup = _resign(cert, tbs.replace(b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x11"), ca_key)
    with pytest.raises(x509.DuplicateExtension):
        _ = dup.extensions
    return dup


def bad_aki_cert(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str
) -> x509.Certificate:
    """A CA-signed certificate whose authorityKeyIdentifier is an OCTET STRING, not a SEQUENCE."""
    aki = x509.UnrecognizedExtension(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, b"\x04\x01\x00")
    cert = _builder(ca_cert, name, [aki]).sign(ca_key, hashes.SHA256())
    with pytest.raises(ValueError):
        _ = cert.extensions
    return cert


MAKERS = {"duplicate-extension": duplicate_san_cert, "malformed-aki": bad_aki_cert}


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _dev_pki(root: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    pki.ensure_dev_pki(root, afs=["af1.example.com"], now=NOW)
    return pki.load_certificate(root / "ca" / "ca.crt"), pki.load_ca_key(root / "ca" / "ca.key")


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_from_directory_names_the_bad_peer_certificate(tmp_path: Path, kind: str) -> None:
    ca_cert, ca_key = _dev_pki(tmp_path)
    bad = tmp_path / "parties" / "network" / "sign-next.crt"
    bad.write_bytes(_pem(MAKERS[kind](ca_cert, ca_key, "network")))
    with pytest.raises(errors.TrustStoreError) as info:
        TrustStore.from_directory(tmp_path)
    assert str(bad) in str(info.value)
    assert "PRIVATE" not in str(info.value) and "BEGIN" not in str(info.value)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_from_directory_names_a_bad_ca_certificate(tmp_path: Path, kind: str) -> None:
    ca_cert, ca_key = _dev_pki(tmp_path)
    bad = tmp_path / "ca" / "extra.crt"
    bad.write_bytes(_pem(MAKERS[kind](ca_cert, ca_key, "other-ca")))
    with pytest.raises(errors.TrustStoreError, match="extra.crt"):
        TrustStore.from_directory(tmp_path)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_reload_with_a_bad_certificate_keeps_the_previous_snapshot(
    tmp_path: Path, kind: str
) -> None:
    ca_cert, ca_key = _dev_pki(tmp_path)
    store = TrustStore.from_directory(tmp_path)
    before = store.snapshot
    sign = pki.load_certificate(tmp_path / "parties" / "af1.example.com" / "sign.crt")
    bad = tmp_path / "parties" / "af1.example.com" / "sign-next.crt"
    bad.write_bytes(_pem(MAKERS[kind](ca_cert, ca_key, "af1.example.com")))
    with pytest.raises(errors.TrustStoreError, match="sign-next.crt"):
        store.reload()
    assert store.snapshot is before
    assert store.signing_cert(kid_of(sign), NOW_MS).identity == "af1.example.com"
    # Once the file is fixed, the next reload succeeds.
    bad.unlink()
    store.reload()
    assert store.snapshot is not before


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_in_memory_material_with_a_bad_certificate_is_a_load_error(kind: str) -> None:
    ca = TestPki()
    party = ca.party("network")
    bad = MAKERS[kind](ca.ca_cert, ca.ca_key, "network")
    with pytest.raises(errors.TrustStoreError, match="malformed certificate"):
        ca.trust([party], extra=[bad])
    with pytest.raises(errors.TrustStoreError, match="malformed certificate"):
        TrustStore.from_material(
            TrustMaterial((ca.ca_cert,), (ca.crl(),), tuple(party.certificates), (bad,))
        )


def test_unparsable_pem_names_the_file(tmp_path: Path) -> None:
    _dev_pki(tmp_path)
    bad = tmp_path / "parties" / "network" / "sign-next.crt"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(errors.TrustStoreError, match="sign-next.crt"):
        TrustStore.from_directory(tmp_path)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_malformed_certificate_at_verify_time_is_an_untrusted_signer(kind: str) -> None:
    # Defence in depth: should a malformed certificate ever reach chain verification, the
    # verdict is UntrustedSignerError, not whatever cryptography raises.
    ca = TestPki()
    party = ca.party("network")
    store = ca.trust([party])
    kid = party.identity.signing_kid
    entry = store.snapshot._signing[kid]
    object.__setattr__(entry.peer, "cert", MAKERS[kind](ca.ca_cert, ca.ca_key, "network"))
    with pytest.raises(errors.UntrustedSignerError):
        store.signing_cert(kid, NOW_MS)
