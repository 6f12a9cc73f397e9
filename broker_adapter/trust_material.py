"""Trust inputs: reading CA certificates, CRLs and peer certificates, and reading their fields.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from broker_adapter.envelope_errors import TrustStoreError
from broker_adapter.identity import is_identity_name

# Must equal ``infra.pki.MLKEM_EXTENSION_OID`` (a documentation-arc placeholder, RFC 5612). It
# is repeated rather than imported because the library must not depend on the PKI tooling; a
# deployment with its own OID passes it to the store.
DEFAULT_MLKEM_EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.32473.1.1")
MLKEM768_PUBLIC_KEY_LEN = 1184

_TLS_USAGES = {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}

# What cryptography raises for a structurally bad certificate or CRL once a field is parsed.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)


def fingerprint(item: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    """SHA-256 of the DER encoding: how ``TrustMaterial.sources`` finds an item's file."""
    return hashlib.sha256(item.public_bytes(serialization.Encoding.DER)).digest()


@dataclass(frozen=True)
class TrustMaterial:
    """Parsed trust inputs; building a snapshot from it does no I/O."""

    anchors: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    certificates: tuple[x509.Certificate, ...] = ()
    intermediates: tuple[x509.Certificate, ...] = ()
    # The file each item came from, by fingerprint, so that an error can name it.
    sources: Mapping[bytes, str] = field(default_factory=lambda: MappingProxyType({}))

    def describe(self, item: x509.Certificate | x509.CertificateRevocationList) -> str:
        digest = fingerprint(item)
        return self.sources.get(digest) or f"item {digest.hex()[:16]}"


def _failure(what: str, exc: Exception) -> str:
    # The class and a bounded message: cryptography's parse errors name tags and OIDs, not bytes.
    return f"{what}: {type(exc).__name__}: {str(exc)[:160]}"


def check_certificate(cert: x509.Certificate, where: str) -> None:
    """Parse every lazily parsed field now, so a malformed certificate fails at load."""
    try:
        _ = cert.extensions
        cert.public_key()
    except PARSE_ERRORS as exc:
        raise TrustStoreError(_failure(f"malformed certificate in {where}", exc)) from exc


def check_crl(crl: x509.CertificateRevocationList, where: str) -> None:
    try:
        _ = crl.extensions
        _ = (crl.last_update_utc, crl.next_update_utc)
        for entry in crl:
            _ = (entry.serial_number, entry.extensions)
    except PARSE_ERRORS as exc:
        raise TrustStoreError(_failure(f"malformed CRL in {where}", exc)) from exc


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TrustStoreError(f"cannot read {path}: {exc}") from exc


def _load_certs(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path))
    except PARSE_ERRORS as exc:
        raise TrustStoreError(_failure(f"cannot parse certificate(s) in {path}", exc)) from exc
    for cert in certs:
        check_certificate(cert, str(path))
    return certs


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_pem_x509_crl(_read(path))
    except PARSE_ERRORS as exc:
        raise TrustStoreError(_failure(f"cannot parse CRL {path}", exc)) from exc
    check_crl(crl, str(path))
    return crl


def load_material(
    *,
    cas: Sequence[Path],
    crls: Sequence[Path] = (),
    certificates: Sequence[Path] = (),
    intermediates: Sequence[Path] = (),
) -> TrustMaterial:
    """Read PEM files (a file may hold several certificates)."""
    sources: dict[bytes, str] = {}

    def certs_in(paths: Sequence[Path]) -> tuple[x509.Certificate, ...]:
        out = []
        for path in paths:
            for cert in _load_certs(path):
                sources.setdefault(fingerprint(cert), str(path))
                out.append(cert)
        return tuple(out)

    def crls_in(paths: Sequence[Path]) -> tuple[x509.CertificateRevocationList, ...]:
        out = []
        for path in paths:
            crl = _load_crl(path)
            sources.setdefault(fingerprint(crl), str(path))
            out.append(crl)
        return tuple(out)

    return TrustMaterial(
        anchors=certs_in(cas),
        crls=crls_in(crls),
        certificates=certs_in(certificates),
        intermediates=certs_in(intermediates),
        sources=MappingProxyType(sources),
    )


def load_directory(directory: Path) -> TrustMaterial:
    """Read the PKI layout of docs/architecture.md.

    ``ca/*.crt`` are anchors, ``ca/*.pem`` CRLs, ``parties/*/sign*.crt`` and
    ``parties/*/enc*.crt`` peer certificates (extra files such as ``sign-next.crt`` let keys
    rotate with overlap). TLS certificates are deliberately not read: they are not message keys.
    """
    root = Path(directory)
    cas = sorted((root / "ca").glob("*.crt"))
    if not cas:
        raise TrustStoreError(f"no CA certificate under {root / 'ca'}")
    parties = root / "parties"
    certs = sorted(parties.glob("*/sign*.crt")) + sorted(parties.glob("*/enc*.crt"))
    return load_material(cas=cas, crls=sorted((root / "ca").glob("*.pem")), certificates=certs)


def single_dns_identity(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = san.get_values_for_type(x509.DNSName)
    if len(names) != 1 or not is_identity_name(names[0]):
        return None
    return names[0]


def key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def is_tls_cert(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return any(usage in _TLS_USAGES for usage in eku)


def mlkem_public_key(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    """The ML-KEM-768 key carried as a DER OCTET STRING in the CA-signed private extension."""
    try:
        ext = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    if not isinstance(ext, x509.UnrecognizedExtension):
        return None
    der = ext.value
    # The only valid shape: OCTET STRING, long-form length on two bytes, 1184 bytes of key.
    header = bytes([0x04, 0x82]) + MLKEM768_PUBLIC_KEY_LEN.to_bytes(2, "big")
    if der[:4] != header or len(der) != 4 + MLKEM768_PUBLIC_KEY_LEN:
        raise TrustStoreError("malformed ML-KEM-768 extension")
    return der[4:]
