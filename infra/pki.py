"""Development PKI: one deployment CA, the broker's server certificate and per-party key sets.

Every party (the network and each AF) gets four key pairs, one per purpose, because a key that
authenticates a TLS connection must not also sign messages or decrypt them:

- ``tls``: TLS client certificate, CN = broker user name, EKU clientAuth;
- ``sign``: message signing key (ECDSA P-256 by default, Ed25519 on request), KU digitalSignature;
- ``enc``: X25519 key for HPKE, KU keyAgreement;
- ``enc-pq``: hybrid ML-KEM-768 + X25519 key for HPKE. X.509 has no registered encoding for the
  hybrid key, so the certificate's SubjectPublicKeyInfo is the X25519 half and the ML-KEM-768
  encapsulation key rides in a private, non-critical extension (``MLKEM_EXTENSION_OID``). It sits
  inside the signed TBSCertificate, so the CA signature authenticates both halves together.

File format of ``enc-pq.key``: two concatenated PKCS#8 PEM blocks (``-----BEGIN PRIVATE KEY-----``),
first the ML-KEM-768 private key (PKCS#8 seed form: the 64-byte FIPS 203 seed d||z), then the
X25519 private key. Both blocks are ordinary PKCS#8 so standard tools can read each half;
``load_hybrid_private_key`` checks the order and the types.

The directory layout is documented in ``docs/architecture.md``. The module is tooling (it reads and
writes files); its certificate-building functions take the clock as an argument so that tests can
issue expired or not-yet-valid certificates without patching time.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infra.errors import InvalidIdentityError, PkiError

Purpose = Literal["tls-client", "tls-server", "sign", "enc", "enc-pq"]
SignAlg = Literal["p256", "ed25519"]

# Private OID for the ML-KEM-768 public key. The arc 1.3.6.1.4.1.32473 is the IANA Private
# Enterprise Number reserved for documentation and examples (RFC 5612), so it can never clash
# with a real vendor's extension. It is a PLACEHOLDER: a production deployment should replace it
# with an OID under its own enterprise number (and every party must agree on it).
MLKEM_EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.32473.1.1")
MLKEM768_PUBLIC_KEY_SIZE = 1184
MLKEM768_SEED_SIZE = 64

DEFAULT_NETWORK = "network"
BROKER_SERVER_NAME = "localhost"
BROKER_SERVER_IPS = ("127.0.0.1",)

# A party name becomes a directory name, a broker user and a dNSName, so only DNS-like names
# are accepted; this also rules out path traversal through "..", "/" and the like.
# Matched with fullmatch and no "$": in Python "$" also matches before a trailing newline.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_IDENTITY_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAX_IDENTITY_LEN = 253

_PEM_BLOCK_RE = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL
)

# Certificates are reissued a little before they expire, so a long-lived dev directory never
# hands out a certificate that dies during a test run.
_RENEW_MARGIN = timedelta(days=30)


def validate_identity(identity: str) -> str:
    """Return ``identity`` if it is a lower-case DNS-style name, else raise."""
    if (
        not isinstance(identity, str)
        or len(identity) > _MAX_IDENTITY_LEN
        or _IDENTITY_RE.fullmatch(identity) is None
    ):
        raise InvalidIdentityError(f"not a DNS-style party name: {identity!r}")
    return identity


# ---- certificate building (clock passed in, no file I/O) -------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def create_ca(
    common_name: str, *, now: datetime, days: int = 3650
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a self-signed ECDSA P-256 deployment CA valid from ``now`` for ``days``."""
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A minute of back-dating absorbs small clock differences between the machine that
        # issued the material and the ones that verify it.
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


_DER_OCTET_STRING = 0x04
# enc-pq.key: the ML-KEM-768 block, then the X25519 block.
_HYBRID_PEM_BLOCKS = 2
# DER length octets: below this the length itself, else this bit plus the count of length bytes.
_DER_LONG_LENGTH = 0x80
# Tag and first length octet.
_DER_HEADER = 2
# Longest length we accept (4 bytes: far beyond any key a certificate carries).
_DER_MAX_LENGTH_BYTES = 4


def _encode_octet_string(data: bytes) -> bytes:
    """DER-encode ``data`` as an ASN.1 OCTET STRING (definite length)."""
    length = len(data)
    if length < _DER_LONG_LENGTH:
        header = bytes([_DER_OCTET_STRING, length])
    else:
        length_bytes = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([_DER_OCTET_STRING, _DER_LONG_LENGTH | len(length_bytes)]) + length_bytes
    return header + data


def _decode_octet_string(der: bytes) -> bytes:
    """Parse exactly one DER OCTET STRING and return its contents; raise on anything else."""
    if len(der) < _DER_HEADER or der[0] != _DER_OCTET_STRING:
        raise PkiError("ML-KEM extension is not an OCTET STRING")
    first = der[1]
    if first < _DER_LONG_LENGTH:
        length, offset = first, _DER_HEADER
    else:
        count = first & 0x7F
        if count == 0 or count > _DER_MAX_LENGTH_BYTES or len(der) < _DER_HEADER + count:
            raise PkiError("ML-KEM extension has a bad length")
        length = int.from_bytes(der[_DER_HEADER : _DER_HEADER + count], "big")
        offset = _DER_HEADER + count
    if len(der) != offset + length:
        raise PkiError("ML-KEM extension has trailing or missing bytes")
    return der[offset:]


def issue_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    identity: str,
    purpose: Purpose,
    public_key: CertificateIssuerPublicKeyTypes | x25519.X25519PublicKey,
    now: datetime,
    days: int = 825,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    mlkem_public_bytes: bytes | None = None,
    san_ips: Sequence[str] = (),
) -> x509.Certificate:
    """Issue a leaf certificate for ``identity`` with the key usage fitting ``purpose``.

    ``not_before``/``not_after`` override the window computed from ``now`` and ``days`` (tests use
    them for expired and not-yet-valid certificates).
    """
    if purpose in ("enc", "enc-pq") and not isinstance(public_key, x25519.X25519PublicKey):
        raise PkiError(f"{purpose} certificates carry an X25519 public key")
    if purpose == "enc-pq":
        if mlkem_public_bytes is None or len(mlkem_public_bytes) != MLKEM768_PUBLIC_KEY_SIZE:
            raise PkiError("enc-pq needs the 1184-byte ML-KEM-768 public key")
    elif mlkem_public_bytes is not None:
        raise PkiError("only enc-pq certificates carry an ML-KEM public key")
    if san_ips and purpose != "tls-server":
        raise PkiError("IP addresses belong in server certificates only")

    start = not_before if not_before is not None else now - timedelta(minutes=1)
    end = not_after if not_after is not None else now + timedelta(days=days)
    sans: list[x509.GeneralName] = [x509.DNSName(identity)]
    sans.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in san_ips)

    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(identity))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return _with_usage(builder, purpose, mlkem_public_bytes).sign(ca_key, hashes.SHA256())


def _with_usage(
    builder: x509.CertificateBuilder, purpose: Purpose, mlkem_public_bytes: bytes | None
) -> x509.CertificateBuilder:
    """The key usage (and extended key usage, or ML-KEM key) extensions fitting ``purpose``."""
    if purpose == "tls-client":
        builder = builder.add_extension(_key_usage(digital_signature=True), critical=True)
        return builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    if purpose == "tls-server":
        builder = builder.add_extension(
            _key_usage(digital_signature=True, key_encipherment=True), critical=True
        )
        return builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if purpose == "sign":
        return builder.add_extension(_key_usage(digital_signature=True), critical=True)
    builder = builder.add_extension(_key_usage(key_agreement=True), critical=True)
    if purpose == "enc-pq":
        if mlkem_public_bytes is None:
            raise PkiError("an enc-pq certificate needs the ML-KEM-768 public key")
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                MLKEM_EXTENSION_OID, _encode_octet_string(mlkem_public_bytes)
            ),
            critical=False,
        )
    return builder


def mlkem_public_key_from_cert(cert: x509.Certificate) -> bytes:
    """Return the 1184-byte ML-KEM-768 public key carried by an ``enc-pq`` certificate."""
    try:
        ext = cert.extensions.get_extension_for_oid(MLKEM_EXTENSION_OID)
    except x509.ExtensionNotFound:
        raise PkiError("certificate carries no ML-KEM-768 public key") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise PkiError("unexpected ML-KEM extension type")
    raw = _decode_octet_string(value.value)
    if len(raw) != MLKEM768_PUBLIC_KEY_SIZE:
        raise PkiError("ML-KEM-768 public key has the wrong size")
    return raw


def hybrid_public_key_from_cert(cert: x509.Certificate) -> hpke.MLKEM768X25519PublicKey:
    """Rebuild the HPKE ML-KEM-768+X25519 public key from an ``enc-pq`` certificate."""
    x_pub = cert.public_key()
    if not isinstance(x_pub, x25519.X25519PublicKey):
        raise PkiError("enc-pq certificate does not carry an X25519 key")
    mlkem_pub = mlkem.MLKEM768PublicKey.from_public_bytes(mlkem_public_key_from_cert(cert))
    return hpke.MLKEM768X25519PublicKey(mlkem_pub, x_pub)


def build_crl(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked_serials: Iterable[int],
    *,
    now: datetime,
    days: int = 7,
) -> x509.CertificateRevocationList:
    """Build a CRL signed by the CA listing ``revoked_serials`` (revocation date = ``now``)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - timedelta(minutes=1))
        .next_update(now + timedelta(days=days))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for serial in sorted(set(revoked_serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - timedelta(minutes=1))
            .build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def kid(cert: x509.Certificate) -> bytes:
    """Key id of a certificate: SHA-256 of its DER encoding (32 bytes)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


# ---- layout ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartyPaths:
    """The eight files of one party's directory."""

    directory: Path

    @property
    def tls_cert(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def tls_key(self) -> Path:
        return self.directory / "tls.key"

    @property
    def sign_cert(self) -> Path:
        return self.directory / "sign.crt"

    @property
    def sign_key(self) -> Path:
        return self.directory / "sign.key"

    @property
    def enc_cert(self) -> Path:
        return self.directory / "enc.crt"

    @property
    def enc_key(self) -> Path:
        return self.directory / "enc.key"

    @property
    def enc_pq_cert(self) -> Path:
        return self.directory / "enc-pq.crt"

    @property
    def enc_pq_key(self) -> Path:
        return self.directory / "enc-pq.key"


@dataclass(frozen=True)
class PkiLayout:
    """Where everything lives under one PKI directory (see docs/architecture.md)."""

    root: Path
    network: str = DEFAULT_NETWORK
    afs: tuple[str, ...] = ()

    @classmethod
    def from_dir(cls, directory: Path, *, network: str = DEFAULT_NETWORK) -> PkiLayout:
        """Describe an existing PKI directory; every party other than ``network`` is an AF."""
        parties_dir = Path(directory) / "parties"
        if not parties_dir.is_dir():
            raise PkiError(f"no PKI at {directory} (missing parties/)")
        names = sorted(p.name for p in parties_dir.iterdir() if p.is_dir())
        return cls(Path(directory), network, tuple(n for n in names if n != network))

    @property
    def parties(self) -> tuple[str, ...]:
        return (self.network, *self.afs)

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def crl(self) -> Path:
        return self.ca_dir / "crl.pem"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def server_cert(self) -> Path:
        return self.broker_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.broker_dir / "server.key"

    @property
    def admin_password_file(self) -> Path:
        return self.root / "admin-password"

    def admin_password(self) -> str:
        return self.admin_password_file.read_text(encoding="ascii").strip()

    def party_dir(self, name: str) -> Path:
        return self.root / "parties" / validate_identity(name)

    def party(self, name: str) -> PartyPaths:
        return PartyPaths(self.party_dir(name))


# ---- file helpers ----------------------------------------------------------------------------


def _ensure_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkdir's mode is filtered by the umask and ignored for existing directories.
    os.chmod(path, 0o700)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file in the same directory, so readers never see half a key."""
    _ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_key(path: Path, key: PrivateKeyTypes) -> None:
    _write_atomic(path, _pkcs8(key), 0o600)


def _pkcs8(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot load certificate {path}: {exc}") from exc


def load_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot load CRL {path}: {exc}") from exc


def _pem_blocks(data: bytes) -> Iterator[bytes]:
    for match in _PEM_BLOCK_RE.finditer(data):
        yield match.group(0)


def load_private_key(path: Path) -> PrivateKeyTypes:
    """Load a single unencrypted PKCS#8 PEM private key."""
    try:
        return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot load private key {path}: {exc}") from exc


def load_ca_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = load_private_key(path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an EC key")
    return key


def load_signing_key(path: Path) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    key = load_private_key(path)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise PkiError(f"{path} is not a P-256 or Ed25519 signing key")
    return key


def load_x25519_private_key(path: Path) -> x25519.X25519PrivateKey:
    key = load_private_key(path)
    if not isinstance(key, x25519.X25519PrivateKey):
        raise PkiError(f"{path} is not an X25519 key")
    return key


def _hybrid_key_bytes(mlkem_key: mlkem.MLKEM768PrivateKey, x_key: x25519.X25519PrivateKey) -> bytes:
    return _pkcs8(mlkem_key) + _pkcs8(x_key)


def load_hybrid_private_key_parts(
    path: Path,
) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    """Load ``enc-pq.key``: ML-KEM-768 PKCS#8 (seed form) block, then X25519 PKCS#8 block."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc}") from exc
    blocks = list(_pem_blocks(data))
    if len(blocks) != _HYBRID_PEM_BLOCKS:
        raise PkiError(f"{path}: expected 2 PEM blocks (ML-KEM-768, X25519), found {len(blocks)}")
    try:
        first = serialization.load_pem_private_key(blocks[0], password=None)
        second = serialization.load_pem_private_key(blocks[1], password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path}: {exc}") from exc
    if not isinstance(first, mlkem.MLKEM768PrivateKey) or not isinstance(
        second, x25519.X25519PrivateKey
    ):
        raise PkiError(f"{path}: blocks must be ML-KEM-768 then X25519")
    return first, second


def load_hybrid_private_key(path: Path) -> hpke.MLKEM768X25519PrivateKey:
    """Load ``enc-pq.key`` as the HPKE KEM.MLKEM768_X25519 private key."""
    mlkem_key, x_key = load_hybrid_private_key_parts(path)
    return hpke.MLKEM768X25519PrivateKey(mlkem_key, x_key)


# ---- idempotent dev PKI ----------------------------------------------------------------------


def _revoked_serials(layout: PkiLayout) -> set[int]:
    if not layout.crl.exists():
        return set()
    return {entry.serial_number for entry in load_crl(layout.crl)}


def _cert_usable(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    revoked: set[int],
    now: datetime,
) -> x509.Certificate | None:
    """Return the certificate if it is present, signed by this CA, in date and not revoked."""
    if not cert_path.exists() or not key_path.exists():
        return None
    try:
        cert = load_certificate(cert_path)
        cert.verify_directly_issued_by(ca_cert)
    except (PkiError, ValueError, TypeError, InvalidSignature):
        return None
    if cert.serial_number in revoked:
        return None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc - _RENEW_MARGIN:
        return None
    return cert


def _public_bytes_of_private(key: PrivateKeyTypes) -> bytes:
    pub = key.public_key()
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _same_public_key(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    cert_pub = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cert_pub == _public_bytes_of_private(key)


def _ensure_ca(
    layout: PkiLayout, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    """Keep a usable CA; otherwise create one. The bool says whether it is new."""
    if layout.ca_cert.exists() and layout.ca_key.exists():
        try:
            cert = load_certificate(layout.ca_cert)
            key = load_ca_key(layout.ca_key)
        except PkiError:
            pass
        else:
            if _same_public_key(cert, key) and cert.not_valid_after_utc - _RENEW_MARGIN > now:
                return cert, key, False
    cert, key = create_ca("AKMA dev deployment CA", now=now)
    _write_key(layout.ca_key, key)
    _write_cert(layout.ca_cert, cert)
    return cert, key, True


def _new_signing_key(sign_alg: str) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    if sign_alg == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if sign_alg == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise PkiError(f"unknown signing algorithm {sign_alg!r} (p256 or ed25519)")


def _sign_alg_matches(key_path: Path, sign_alg: str) -> bool:
    try:
        key = load_signing_key(key_path)
    except PkiError:
        return False
    if sign_alg == "ed25519":
        return isinstance(key, ed25519.Ed25519PrivateKey)
    return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


def _key_fits(cert: x509.Certificate, key_path: Path, purpose: Purpose, sign_alg: str) -> bool:
    """Whether the key file holds the certificate's key (of ``sign_alg`` for a signing key)."""
    if purpose == "enc-pq":
        try:
            mlkem_key, x_key = load_hybrid_private_key_parts(key_path)
            return (
                _same_public_key(cert, x_key)
                and mlkem_public_key_from_cert(cert) == mlkem_key.public_key().public_bytes_raw()
            )
        except PkiError:
            return False
    try:
        keep = _same_public_key(cert, load_private_key(key_path))
    except PkiError:
        return False
    if keep and purpose == "sign":
        keep = _sign_alg_matches(key_path, sign_alg)
    return keep


def _new_key(
    key_path: Path, purpose: Purpose, sign_alg: str
) -> tuple[CertificateIssuerPublicKeyTypes | x25519.X25519PublicKey, bytes | None]:
    """Write a fresh key for ``purpose``; its public key (and ML-KEM public key for enc-pq)."""
    if purpose == "enc-pq":
        mlkem_key = mlkem.MLKEM768PrivateKey.generate()
        x_key = x25519.X25519PrivateKey.generate()
        _write_atomic(key_path, _hybrid_key_bytes(mlkem_key, x_key), 0o600)
        return x_key.public_key(), mlkem_key.public_key().public_bytes_raw()
    key: PrivateKeyTypes
    if purpose == "sign":
        key = _new_signing_key(sign_alg)
    elif purpose == "enc":
        key = x25519.X25519PrivateKey.generate()
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    _write_key(key_path, key)
    pub = key.public_key()
    if not isinstance(
        pub, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, x25519.X25519PublicKey)
    ):
        raise PkiError(f"unexpected {purpose} key type {type(pub).__name__}")
    return pub, None


def _ensure_pair(
    cert_path: Path,
    key_path: Path,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    revoked: set[int],
    now: datetime,
    *,
    identity: str,
    purpose: Purpose,
    sign_alg: str = "p256",
    san_ips: Sequence[str] = (),
) -> None:
    """Keep a usable certificate/key pair, else make a fresh key and certificate."""
    ca_cert, ca_key = ca
    cert = _cert_usable(cert_path, key_path, ca_cert, revoked, now)
    if cert is not None and _key_fits(cert, key_path, purpose, sign_alg):
        return
    public_key, mlkem_public = _new_key(key_path, purpose, sign_alg)
    cert = issue_cert(
        ca_cert,
        ca_key,
        identity=identity,
        purpose=purpose,
        public_key=public_key,
        now=now,
        mlkem_public_bytes=mlkem_public,
        san_ips=san_ips,
    )
    _write_cert(cert_path, cert)


def _ensure_crl(
    layout: PkiLayout,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    revoked: set[int],
    now: datetime,
    *,
    force: bool,
) -> None:
    ca_cert, ca_key = ca
    if not force and layout.crl.exists():
        try:
            crl = load_crl(layout.crl)
            fresh = (
                crl.is_signature_valid(ca_key.public_key())
                and crl.next_update_utc is not None
                and crl.next_update_utc - timedelta(days=1) > now
            )
        except PkiError:
            fresh = False
        if fresh:
            return
    crl = build_crl(ca_cert, ca_key, revoked, now=now)
    _write_atomic(layout.crl, crl.public_bytes(serialization.Encoding.PEM), 0o644)


def ensure_dev_pki(
    directory: Path,
    *,
    afs: Sequence[str],
    network: str = DEFAULT_NETWORK,
    sign_alg: str = "p256",
    now: datetime | None = None,
) -> PkiLayout:
    """Create or complete the dev PKI under ``directory`` and return its layout.

    Idempotent: material that is present, issued by the current CA, in date (with a 30-day
    renewal margin), unrevoked and matching its private key is kept; anything else is replaced.
    Parties already on disk but not named now are left alone. If the CA itself has to be
    recreated, everything below it is reissued and the CRL starts empty.
    """
    moment = now if now is not None else datetime.now(UTC)
    validate_identity(network)
    for af in afs:
        validate_identity(af)
    if network in afs:
        raise InvalidIdentityError(f"an AF cannot be named like the network party: {network!r}")
    if sign_alg not in ("p256", "ed25519"):
        raise PkiError(f"unknown signing algorithm {sign_alg!r} (p256 or ed25519)")

    layout = PkiLayout(Path(directory), network, tuple(dict.fromkeys(afs)))
    _ensure_dir(layout.root)
    for sub in (layout.ca_dir, layout.broker_dir, layout.root / "parties"):
        _ensure_dir(sub)

    ca_cert, ca_key, ca_is_new = _ensure_ca(layout, moment)
    ca = (ca_cert, ca_key)
    revoked = set() if ca_is_new else _revoked_serials(layout)
    _ensure_crl(layout, ca, revoked, moment, force=ca_is_new)

    _ensure_pair(
        layout.server_cert,
        layout.server_key,
        ca,
        revoked,
        moment,
        identity=BROKER_SERVER_NAME,
        purpose="tls-server",
        san_ips=BROKER_SERVER_IPS,
    )
    for party in layout.parties:
        paths = layout.party(party)
        _ensure_dir(paths.directory)
        _ensure_pair(
            paths.tls_cert, paths.tls_key, ca, revoked, moment, identity=party, purpose="tls-client"
        )
        _ensure_pair(
            paths.sign_cert,
            paths.sign_key,
            ca,
            revoked,
            moment,
            identity=party,
            purpose="sign",
            sign_alg=sign_alg,
        )
        _ensure_pair(
            paths.enc_cert, paths.enc_key, ca, revoked, moment, identity=party, purpose="enc"
        )
        _ensure_pair(
            paths.enc_pq_cert,
            paths.enc_pq_key,
            ca,
            revoked,
            moment,
            identity=party,
            purpose="enc-pq",
        )

    if not layout.admin_password_file.exists() or not layout.admin_password():
        # 32 random bytes in URL-safe base64: no characters that need quoting in shells or URLs.
        _write_atomic(layout.admin_password_file, secrets.token_urlsafe(32).encode() + b"\n", 0o600)
    return layout


def revoke(
    directory: Path, serial_or_cert: int | x509.Certificate, *, now: datetime | None = None
) -> x509.CertificateRevocationList:
    """Add a certificate (or serial number) to the CA's CRL and rewrite ``crl.pem``."""
    moment = now if now is not None else datetime.now(UTC)
    layout = PkiLayout(Path(directory))
    ca_cert = load_certificate(layout.ca_cert)
    ca_key = load_ca_key(layout.ca_key)
    serial = serial_or_cert if isinstance(serial_or_cert, int) else serial_or_cert.serial_number
    revoked = _revoked_serials(layout) | {serial}
    crl = build_crl(ca_cert, ca_key, revoked, now=moment)
    _write_atomic(layout.crl, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return crl


# ---- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.pki", description="Create or complete the AKMA dev PKI."
    )
    parser.add_argument("--dir", required=True, type=Path, help="PKI directory")
    parser.add_argument("--network", default=DEFAULT_NETWORK, help="network party name")
    parser.add_argument("--af", action="append", default=[], help="AF FQDN (repeatable)")
    parser.add_argument("--sign-alg", choices=("p256", "ed25519"), default="p256")
    parser.add_argument(
        "--revoke", metavar="CERT", type=Path, help="revoke this certificate file instead"
    )
    args = parser.parse_args(argv)
    if args.revoke is not None:
        cert = load_certificate(args.revoke)
        revoke(args.dir, cert)
        print(f"revoked serial {cert.serial_number:x}; CRL at {PkiLayout(args.dir).crl}")
        return 0
    layout = ensure_dev_pki(args.dir, afs=args.af, network=args.network, sign_alg=args.sign_alg)
    print(f"PKI ready in {layout.root} for parties: {', '.join(layout.parties)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
