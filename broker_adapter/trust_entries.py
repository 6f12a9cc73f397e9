"""Trust entries: checked certificates and CRLs sorted into what the snapshot looks up.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519

from broker_adapter.envelope_errors import TrustStoreError
from broker_adapter.identity import kid_of
from broker_adapter.suites import KemAlgorithm, KemPublicKey, SigningPublicKey
from broker_adapter.trust_material import (
    TrustMaterial,
    is_tls_cert,
    key_usage,
    mlkem_public_key,
    single_dns_identity,
)


def datetime_to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class PeerCert:
    kid: bytes
    cert: x509.Certificate
    identity: str
    issuer: x509.Certificate
    issuer_key: bytes  # DER of the issuer's name: the CRL index key, computed once
    valid_from_ms: int  # intersection of the validity periods of the leaf and its CA
    valid_until_ms: int


@dataclass(frozen=True)
class SigningCert:
    peer: PeerCert
    public_key: SigningPublicKey


@dataclass(frozen=True)
class EncryptionCert:
    peer: PeerCert
    kem: KemAlgorithm
    public_key: KemPublicKey


@dataclass(frozen=True)
class Revocation:
    serials: frozenset[int]
    last_update_ms: int
    next_update_ms: int


def index_crls(
    material: TrustMaterial, issuers: Sequence[x509.Certificate]
) -> dict[bytes, Revocation]:
    """Index CRLs by issuer DER name; a CRL whose signature fails is a load error."""
    out: dict[bytes, Revocation] = {}
    for crl in material.crls:
        where = material.describe(crl)
        issuer = next((c for c in issuers if c.subject == crl.issuer), None)
        if issuer is None:
            raise TrustStoreError(f"{where}: CRL from unknown issuer {crl.issuer.rfc4514_string()}")
        public_key = issuer.public_key()
        if not isinstance(public_key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
            raise TrustStoreError(f"{where}: unsupported CA key type for CRL verification")
        if not crl.is_signature_valid(public_key):
            raise TrustStoreError(f"{where}: CRL signature does not verify against its CA")
        if crl.next_update_utc is None:
            raise TrustStoreError(f"{where}: CRL has no nextUpdate")
        revocation = Revocation(
            frozenset(r.serial_number for r in crl),
            datetime_to_ms(crl.last_update_utc),
            datetime_to_ms(crl.next_update_utc),
        )
        key = issuer.subject.public_bytes()
        # With several CRLs for one issuer, the most recent one wins.
        if key not in out or out[key].last_update_ms < revocation.last_update_ms:
            out[key] = revocation
    return out


def classify(
    cert: x509.Certificate,
    issuers: Sequence[x509.Certificate],
    mlkem_oid: x509.ObjectIdentifier,
) -> SigningCert | EncryptionCert | None:
    """Sort a peer certificate into signing or encryption; ignore anything else."""
    identity = single_dns_identity(cert)
    usage = key_usage(cert)
    issuer = next((c for c in issuers if c.subject == cert.issuer), None)
    if identity is None or usage is None or issuer is None:
        # Left out of the index: a lookup by its kid then reports an unknown signer.
        return None
    common = PeerCert(
        kid=kid_of(cert),
        cert=cert,
        identity=identity,
        issuer=issuer,
        issuer_key=issuer.subject.public_bytes(),
        valid_from_ms=datetime_to_ms(max(cert.not_valid_before_utc, issuer.not_valid_before_utc)),
        valid_until_ms=datetime_to_ms(min(cert.not_valid_after_utc, issuer.not_valid_after_utc)),
    )
    public_key = cert.public_key()
    signing_key_type = isinstance(public_key, ed25519.Ed25519PublicKey) or (
        isinstance(public_key, ec.EllipticCurvePublicKey)
        and isinstance(public_key.curve, ec.SECP256R1)
    )
    # A TLS certificate must not double as a message-signing key, even with the right usage.
    if (
        usage.digital_signature
        and signing_key_type
        and isinstance(public_key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey))
        and not is_tls_cert(cert)
    ):
        return SigningCert(common, public_key)
    if usage.key_agreement and isinstance(public_key, x25519.X25519PublicKey):
        raw = mlkem_public_key(cert, mlkem_oid)
        if raw is None:
            return EncryptionCert(common, KemAlgorithm.X25519, public_key)
        try:
            mlkem_pub = mlkem.MLKEM768PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise TrustStoreError(f"bad ML-KEM-768 public key: {exc}") from exc
        return EncryptionCert(
            common,
            KemAlgorithm.MLKEM768_X25519,
            hpke.MLKEM768X25519PublicKey(mlkem_pub, public_key),
        )
    return None
