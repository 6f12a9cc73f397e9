"""Who we are (``LocalIdentity``) and whom we encrypt to (``RecipientKey``).

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519

from broker_adapter.envelope_errors import NotForMeError, TrustStoreError
from broker_adapter.suites import KemPrivateKey, KemPublicKey, SigningPrivateKey, Suite

KID_LEN = 32

# A party name is a broker user, a certificate dNSName and a routing key, so it is restricted to
# lower-case DNS-style names: one spelling per identity, nothing that needs escaping.
# Matched with fullmatch and no "$": in Python "$" also matches before a trailing newline.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_IDENTITY_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
MAX_IDENTITY_LEN = 253
_HYBRID_PEM_BLOCKS = 2  # ML-KEM-768, then X25519

_PEM_BLOCK_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


def is_identity_name(name: str) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= MAX_IDENTITY_LEN
        and _IDENTITY_RE.fullmatch(name) is not None
    )


def kid_of(cert: x509.Certificate) -> bytes:
    """Key id of a certificate: SHA-256 over its DER encoding (docs/architecture.md)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def _raw_public(key: x25519.X25519PublicKey | x25519.X25519PrivateKey) -> bytes:
    pub = key.public_key() if isinstance(key, x25519.X25519PrivateKey) else key
    return pub.public_bytes_raw()


@dataclass(frozen=True)
class RecipientKey:
    """A peer's encryption public key as chosen by the trust store for one suite."""

    name: str
    kid: bytes
    public_key: KemPublicKey


@dataclass(frozen=True)
class LocalIdentity:
    """Our own name, signing key and decryption keys (by key id)."""

    name: str
    signing_key: SigningPrivateKey
    signing_kid: bytes
    decryption_keys: Mapping[bytes, KemPrivateKey] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # The signing certificate's end of validity; peers refuse what we sign after it.
    signing_not_after_ms: int | None = None

    def __post_init__(self) -> None:
        if not is_identity_name(self.name):
            raise TrustStoreError(f"not a DNS-style identity name: {self.name!r}")
        if len(self.signing_kid) != KID_LEN:
            raise TrustStoreError("signing key id must be 32 bytes")
        # A frozen copy, so that no caller can add a key behind the envelope's back.
        object.__setattr__(self, "decryption_keys", MappingProxyType(dict(self.decryption_keys)))

    @classmethod
    def from_certificates(
        cls,
        name: str,
        *,
        signing_key: SigningPrivateKey,
        signing_cert: x509.Certificate,
        decryption_keys: Iterable[tuple[x509.Certificate, KemPrivateKey]],
    ) -> LocalIdentity:
        """Build an identity, checking that every private key matches its certificate."""
        if signing_cert.public_key() != signing_key.public_key():
            raise TrustStoreError("signing key does not match its certificate")
        keys: dict[bytes, KemPrivateKey] = {}
        for cert, key in decryption_keys:
            cert_pub = cert.public_key()
            if not isinstance(cert_pub, x25519.X25519PublicKey):
                raise TrustStoreError("encryption certificates carry an X25519 public key")
            # For the hybrid key only the X25519 half can be compared (cryptography exposes no
            # accessor for the halves); a wrong ML-KEM half would fail at decryption, loudly.
            if isinstance(key, x25519.X25519PrivateKey) and _raw_public(key) != _raw_public(
                cert_pub
            ):
                raise TrustStoreError("decryption key does not match its certificate")
            keys[kid_of(cert)] = key
        return cls(name, signing_key, kid_of(signing_cert), MappingProxyType(keys),
                   int(signing_cert.not_valid_after_utc.timestamp() * 1000))

    def decryption_key(self, kid: bytes, suite: Suite) -> KemPrivateKey:
        """Our private key for ``kid`` if it is ours and fits the suite's KEM."""
        key = self.decryption_keys.get(kid)
        if key is None or not suite.accepts_kem_key(key):
            raise NotForMeError("recipient key id is not one of our keys for this suite")
        return key


def _load_private_pem(data: bytes, what: str) -> object:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TrustStoreError(f"cannot load {what}: {exc}") from exc


def load_hybrid_private_key(data: bytes) -> hpke.MLKEM768X25519PrivateKey:
    """Parse ``enc-pq.key``: a PKCS#8 ML-KEM-768 block followed by a PKCS#8 X25519 block."""
    blocks = [m.group(0) for m in _PEM_BLOCK_RE.finditer(data)]
    if len(blocks) != _HYBRID_PEM_BLOCKS:
        raise TrustStoreError("hybrid key file must hold exactly two PEM blocks")
    first = _load_private_pem(blocks[0], "ML-KEM-768 half")
    second = _load_private_pem(blocks[1], "X25519 half")
    if not isinstance(first, mlkem.MLKEM768PrivateKey) or not isinstance(
        second, x25519.X25519PrivateKey
    ):
        raise TrustStoreError("hybrid key blocks must be ML-KEM-768 then X25519")
    return hpke.MLKEM768X25519PrivateKey(first, second)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TrustStoreError(f"cannot read {path}: {exc}") from exc


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as exc:
        raise TrustStoreError(f"cannot load certificate {path}: {exc}") from exc


def load_local_identity(party_dir: Path, name: str) -> LocalIdentity:
    """Load ``sign.*``, ``enc.*`` and (if present) ``enc-pq.*`` from a party directory.

    Extra decryption keys kept during a rotation may sit next to them as ``enc-<tag>.crt`` /
    ``enc-<tag>.key`` pairs; a ``.key`` with two PEM blocks is read as a hybrid key.
    """
    party_dir = Path(party_dir)
    signing_key = _load_private_pem(_read(party_dir / "sign.key"), "signing key")
    if not isinstance(signing_key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise TrustStoreError("signing key must be ECDSA P-256 or Ed25519")
    pairs: list[tuple[x509.Certificate, KemPrivateKey]] = []
    for cert_path in sorted(party_dir.glob("enc*.crt")):
        key_data = _read(cert_path.with_suffix(".key"))
        key: KemPrivateKey
        if key_data.count(b"-----BEGIN") == _HYBRID_PEM_BLOCKS:
            key = load_hybrid_private_key(key_data)
        else:
            loaded = _load_private_pem(key_data, str(cert_path.with_suffix(".key")))
            if not isinstance(loaded, x25519.X25519PrivateKey):
                raise TrustStoreError(f"{cert_path.with_suffix('.key')} is not an X25519 key")
            key = loaded
        pairs.append((_load_cert(cert_path), key))
    return LocalIdentity.from_certificates(
        name,
        signing_key=signing_key,
        signing_cert=_load_cert(party_dir / "sign.crt"),
        decryption_keys=pairs,
    )
