"""Trust store: which certificates may sign our messages and which keys we may encrypt to.

The store holds an immutable ``TrustSnapshot`` built from CA certificates, CRLs and the peers'
signing and encryption certificates. ``reload()`` builds a new snapshot from the same source
and swaps it in with one assignment, so a reader always sees either the old material or the
new, never a mixture, and a failed reload leaves the old snapshot in force.

Certificate checks: validity period at the caller's ``now`` (time is an argument, never read
here), chain to a configured CA with ``cryptography.x509.verification``, key usage fitting the
purpose (digitalSignature for signing, keyAgreement for encryption), revocation against a CRL
whose signature was checked against the CA and whose nextUpdate has not passed. Verdicts are
cached per key id until the earliest of the certificate's and CA's notAfter and the CRL's
nextUpdate, because receiver-side verification is the per-core ceiling and a chain check per
message would cost more than the signature itself.

Only ``TrustStore.from_paths``/``from_directory`` and ``reload`` read files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from broker_adapter.envelope import VerifiedSigner
from broker_adapter.envelope_errors import (
    ExpiredSignerError,
    NoRecipientKeyError,
    RevokedSignerError,
    TrustStoreError,
    UntrustedSignerError,
)
from broker_adapter.identity import RecipientKey, is_identity_name, kid_of
from broker_adapter.suites import KemAlgorithm, KemPublicKey, SigningPublicKey, Suite

# Must equal ``infra.pki.MLKEM_EXTENSION_OID`` (a documentation-arc placeholder, RFC 5612). It
# is repeated rather than imported because the library must not depend on the PKI tooling; a
# deployment with its own OID passes it to the store.
DEFAULT_MLKEM_EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.32473.1.1")
MLKEM768_PUBLIC_KEY_LEN = 1184

_TLS_USAGES = {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}


def _ms_to_datetime(now_ms: int) -> datetime:
    return datetime.fromtimestamp(now_ms / 1000, tz=UTC)


def _datetime_to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# ---- input material ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustMaterial:
    """Parsed trust inputs; building a snapshot from it does no I/O."""

    anchors: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    certificates: tuple[x509.Certificate, ...] = ()
    intermediates: tuple[x509.Certificate, ...] = ()


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TrustStoreError(f"cannot read {path}: {exc}") from exc


def _load_certs(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(_read(path))
    except ValueError as exc:
        raise TrustStoreError(f"cannot parse certificate(s) in {path}: {exc}") from exc


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl(_read(path))
    except ValueError as exc:
        raise TrustStoreError(f"cannot parse CRL {path}: {exc}") from exc


def load_material(
    *,
    cas: Sequence[Path],
    crls: Sequence[Path] = (),
    certificates: Sequence[Path] = (),
    intermediates: Sequence[Path] = (),
) -> TrustMaterial:
    """Read PEM files (a file may hold several certificates)."""
    return TrustMaterial(
        anchors=tuple(c for p in cas for c in _load_certs(p)),
        crls=tuple(_load_crl(p) for p in crls),
        certificates=tuple(c for p in certificates for c in _load_certs(p)),
        intermediates=tuple(c for p in intermediates for c in _load_certs(p)),
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


# ---- the snapshot -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PeerCert:
    kid: bytes
    cert: x509.Certificate
    identity: str
    issuer: x509.Certificate
    issuer_key: bytes  # DER of the issuer's name: the CRL index key, computed once
    valid_from_ms: int  # intersection of the validity periods of the leaf and its CA
    valid_until_ms: int


@dataclass(frozen=True)
class _SigningCert:
    peer: _PeerCert
    public_key: SigningPublicKey


@dataclass(frozen=True)
class _EncryptionCert:
    peer: _PeerCert
    kem: KemAlgorithm
    public_key: KemPublicKey


@dataclass(frozen=True)
class _CachedVerdict:
    """A chain verification outcome and the interval during which it stays true."""

    error: type[UntrustedSignerError] | None
    detail: str
    valid_until_ms: int


@dataclass(frozen=True)
class _Revocation:
    serials: frozenset[int]
    last_update_ms: int
    next_update_ms: int


def _single_dns_identity(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = san.get_values_for_type(x509.DNSName)
    if len(names) != 1 or not is_identity_name(names[0]):
        return None
    return names[0]


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _is_tls_cert(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return any(usage in _TLS_USAGES for usage in eku)


def _mlkem_public_key(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
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


class TrustSnapshot:
    """Immutable trust material plus a verdict cache that lives and dies with it."""

    def __init__(
        self,
        material: TrustMaterial,
        *,
        require_crl: bool = True,
        mlkem_oid: x509.ObjectIdentifier = DEFAULT_MLKEM_EXTENSION_OID,
    ) -> None:
        if not material.anchors:
            raise TrustStoreError("no trust anchor")
        self.require_crl = require_crl
        self._store = verification.Store(list(material.anchors))
        self._intermediates = list(material.intermediates)
        issuers = [*material.anchors, *material.intermediates]
        self._revocations = self._index_crls(material.crls, issuers)
        signing: dict[bytes, _SigningCert] = {}
        encryption: dict[str, list[_EncryptionCert]] = {}
        for cert in material.certificates:
            entry = self._classify(cert, issuers, mlkem_oid)
            if isinstance(entry, _SigningCert):
                signing[entry.peer.kid] = entry
            elif isinstance(entry, _EncryptionCert):
                encryption.setdefault(entry.peer.identity, []).append(entry)
        self._signing = signing
        # Newest first, so the first valid one is the one to encrypt to.
        self._encryption = {
            name: tuple(sorted(es, key=lambda e: e.peer.cert.not_valid_before_utc, reverse=True))
            for name, es in encryption.items()
        }
        self._verdicts: dict[bytes, _CachedVerdict] = {}
        self._lock = threading.Lock()

    # ---- building ---------------------------------------------------------------------------

    @staticmethod
    def _index_crls(
        crls: Iterable[x509.CertificateRevocationList], issuers: Sequence[x509.Certificate]
    ) -> dict[bytes, _Revocation]:
        """Index CRLs by issuer DER name; a CRL whose signature fails is a load error."""
        out: dict[bytes, _Revocation] = {}
        for crl in crls:
            issuer = next((c for c in issuers if c.subject == crl.issuer), None)
            if issuer is None:
                raise TrustStoreError(f"CRL from unknown issuer {crl.issuer.rfc4514_string()}")
            public_key = issuer.public_key()
            if not isinstance(public_key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
                raise TrustStoreError("unsupported CA key type for CRL verification")
            if not crl.is_signature_valid(public_key):
                raise TrustStoreError("CRL signature does not verify against its CA")
            if crl.next_update_utc is None:
                raise TrustStoreError("CRL has no nextUpdate")
            revocation = _Revocation(
                frozenset(r.serial_number for r in crl),
                _datetime_to_ms(crl.last_update_utc),
                _datetime_to_ms(crl.next_update_utc),
            )
            key = issuer.subject.public_bytes()
            # With several CRLs for one issuer, the most recent one wins.
            if key not in out or out[key].last_update_ms < revocation.last_update_ms:
                out[key] = revocation
        return out

    @staticmethod
    def _classify(
        cert: x509.Certificate,
        issuers: Sequence[x509.Certificate],
        mlkem_oid: x509.ObjectIdentifier,
    ) -> _SigningCert | _EncryptionCert | None:
        """Sort a peer certificate into signing or encryption; ignore anything else."""
        identity = _single_dns_identity(cert)
        usage = _key_usage(cert)
        issuer = next((c for c in issuers if c.subject == cert.issuer), None)
        if identity is None or usage is None or issuer is None:
            # Left out of the index: a lookup by its kid then reports an unknown signer.
            return None
        common = _PeerCert(
            kid=kid_of(cert),
            cert=cert,
            identity=identity,
            issuer=issuer,
            issuer_key=issuer.subject.public_bytes(),
            valid_from_ms=_datetime_to_ms(
                max(cert.not_valid_before_utc, issuer.not_valid_before_utc)
            ),
            valid_until_ms=_datetime_to_ms(
                min(cert.not_valid_after_utc, issuer.not_valid_after_utc)
            ),
        )
        public_key = cert.public_key()
        signing_key_type = isinstance(public_key, ed25519.Ed25519PublicKey) or (
            isinstance(public_key, ec.EllipticCurvePublicKey)
            and isinstance(public_key.curve, ec.SECP256R1)
        )
        # A TLS certificate must not double as a message-signing key, even with the right usage.
        if usage.digital_signature and signing_key_type and not _is_tls_cert(cert):
            assert isinstance(public_key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey))
            return _SigningCert(common, public_key)
        if usage.key_agreement and isinstance(public_key, x25519.X25519PublicKey):
            raw = _mlkem_public_key(cert, mlkem_oid)
            if raw is None:
                return _EncryptionCert(common, KemAlgorithm.X25519, public_key)
            try:
                mlkem_pub = mlkem.MLKEM768PublicKey.from_public_bytes(raw)
            except ValueError as exc:
                raise TrustStoreError(f"bad ML-KEM-768 public key: {exc}") from exc
            return _EncryptionCert(
                common,
                KemAlgorithm.MLKEM768_X25519,
                hpke.MLKEM768X25519PublicKey(mlkem_pub, public_key),
            )
        return None

    # ---- verification -----------------------------------------------------------------------

    def _check(self, entry: _PeerCert, now_ms: int, *, signing: bool) -> None:
        """Raise unless ``entry`` is trusted at ``now_ms``; cheap checks first, chain cached."""
        if now_ms > entry.valid_until_ms:
            raise ExpiredSignerError("certificate or its CA has expired")
        if now_ms < entry.valid_from_ms:
            raise UntrustedSignerError("certificate is not valid yet")
        revocation = self._revocations.get(entry.issuer_key)
        until = entry.valid_until_ms
        if revocation is not None:
            if now_ms > revocation.next_update_ms:
                # Failing closed: without a current CRL a revoked key could not be told apart.
                raise UntrustedSignerError("CRL is past its nextUpdate")
            if entry.cert.serial_number in revocation.serials:
                raise RevokedSignerError(f"serial {entry.cert.serial_number:x} is revoked")
            until = min(until, revocation.next_update_ms)
        elif self.require_crl:
            raise UntrustedSignerError("no CRL for the issuing CA")
        cached = self._verdicts.get(entry.kid)
        if cached is None or now_ms > cached.valid_until_ms:
            failure = self._verify_chain(entry, now_ms, signing=signing)
            # Failures are cached too: otherwise anyone able to encrypt to us could make us
            # repeat a chain verification per message by naming a foreign certificate's kid.
            cached = _CachedVerdict(
                None if failure is None else UntrustedSignerError, failure or "", until
            )
            with self._lock:
                self._verdicts[entry.kid] = cached
        if cached.error is not None:
            # A fresh instance per raise, so a cached error never accumulates tracebacks.
            raise cached.error(cached.detail)

    def _verify_chain(self, entry: _PeerCert, now_ms: int, *, signing: bool) -> str | None:
        """Return why the chain fails, or None when it verifies."""

        def key_usage_fits(
            _policy: verification.Policy, _cert: x509.Certificate, ku: x509.KeyUsage | None
        ) -> None:
            if ku is None or not (ku.digital_signature if signing else ku.key_agreement):
                raise ValueError("key usage does not fit the purpose")

        ee_policy = verification.ExtensionPolicy.webpki_defaults_ee().require_present(
            x509.KeyUsage, verification.Criticality.AGNOSTIC, key_usage_fits
        )
        verifier = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(_ms_to_datetime(now_ms))
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
            )
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(entry.cert, self._intermediates)
        except verification.VerificationError as exc:
            return f"chain does not verify: {str(exc)[:200]}"
        if x509.DNSName(entry.identity) not in (verified.subjects or []):
            return "verified subjects do not name the identity"
        return None

    # ---- lookups ----------------------------------------------------------------------------

    def signing_cert(self, kid: bytes, now_ms: int) -> VerifiedSigner:
        entry = self._signing.get(kid)
        if entry is None:
            raise UntrustedSignerError("unknown signer key id")
        self._check(entry.peer, now_ms, signing=True)
        return VerifiedSigner(entry.peer.identity, entry.public_key)

    def encryption_key_for(self, identity: str, suite: Suite, now_ms: int) -> RecipientKey:
        """The newest trusted encryption key of ``identity`` for the suite's KEM."""
        for entry in self._encryption.get(identity, ()):
            if entry.kem is not suite.kem:
                continue
            try:
                self._check(entry.peer, now_ms, signing=False)
            except UntrustedSignerError:
                continue
            return RecipientKey(identity, entry.peer.kid, entry.public_key)
        raise NoRecipientKeyError(f"no trusted {suite.kem.value} key for {identity!r}")

    def identities(self) -> frozenset[str]:
        names = {e.peer.identity for e in self._signing.values()}
        return frozenset(names | self._encryption.keys())


class TrustStore:
    """The current snapshot plus how to rebuild it; ``reload()`` swaps atomically."""

    def __init__(
        self,
        loader: Callable[[], TrustMaterial] | None,
        *,
        require_crl: bool = True,
        mlkem_oid: x509.ObjectIdentifier = DEFAULT_MLKEM_EXTENSION_OID,
        material: TrustMaterial | None = None,
    ) -> None:
        """Load now from ``material`` (static) or from ``loader`` (reloadable)."""
        self._loader = loader
        self._require_crl = require_crl
        self._mlkem_oid = mlkem_oid
        if material is not None:
            self._snapshot = self._build(material)
        elif loader is not None:
            self._snapshot = self._build(loader())
        else:
            raise TrustStoreError("a trust store needs material or a loader")

    def _build(self, material: TrustMaterial) -> TrustSnapshot:
        return TrustSnapshot(material, require_crl=self._require_crl, mlkem_oid=self._mlkem_oid)

    @classmethod
    def from_material(cls, material: TrustMaterial, *, require_crl: bool = True) -> TrustStore:
        """A store over in-memory material (``reload`` is then a no-op)."""
        return cls(None, require_crl=require_crl, material=material)

    @classmethod
    def from_paths(
        cls,
        *,
        cas: Sequence[Path],
        crls: Sequence[Path] = (),
        certificates: Sequence[Path] = (),
        intermediates: Sequence[Path] = (),
        require_crl: bool = True,
    ) -> TrustStore:
        frozen = (tuple(cas), tuple(crls), tuple(certificates), tuple(intermediates))

        def loader() -> TrustMaterial:
            return load_material(
                cas=frozen[0], crls=frozen[1], certificates=frozen[2], intermediates=frozen[3]
            )

        return cls(loader, require_crl=require_crl)

    @classmethod
    def from_directory(cls, directory: Path, *, require_crl: bool = True) -> TrustStore:
        root = Path(directory)
        return cls(lambda: load_directory(root), require_crl=require_crl)

    @property
    def snapshot(self) -> TrustSnapshot:
        return self._snapshot

    def reload(self) -> None:
        """Re-read the source and swap in a new snapshot; on error keep the current one."""
        if self._loader is None:
            return
        fresh = self._build(self._loader())
        # One reference assignment: concurrent readers see the old or the new snapshot whole.
        self._snapshot = fresh

    def signing_cert(self, kid: bytes, now_ms: int) -> VerifiedSigner:
        return self._snapshot.signing_cert(kid, now_ms)

    def encryption_key_for(self, identity: str, suite: Suite, now_ms: int) -> RecipientKey:
        return self._snapshot.encryption_key_for(identity, suite, now_ms)
