"""Trust store: which certificates may sign our messages and which keys we may encrypt to.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509 import verification

from broker_adapter.envelope import VerifiedSigner
from broker_adapter.envelope_errors import (
    ExpiredSignerError,
    NoRecipientKeyError,
    RevokedSignerError,
    StaleTrustError,
    TrustStoreError,
    UntrustedSignerError,
)
from broker_adapter.identity import RecipientKey
from broker_adapter.suites import Suite
from broker_adapter.trust_entries import (
    EncryptionCert,
    PeerCert,
    SigningCert,
    classify,
    index_crls,
)
from broker_adapter.trust_material import (
    DEFAULT_MLKEM_EXTENSION_OID,
    MLKEM768_PUBLIC_KEY_LEN,
    PARSE_ERRORS,
    TrustMaterial,
    check_certificate,
    check_crl,
    load_directory,
    load_material,
)


def _ms_to_datetime(now_ms: int) -> datetime:
    return datetime.fromtimestamp(now_ms / 1000, tz=UTC)


@dataclass(frozen=True)
class _CachedVerdict:
    """A chain verification outcome and the interval during which it stays true."""

    error: type[UntrustedSignerError] | None
    detail: str
    valid_until_ms: int


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
        # In-memory material has not been through the loader's checks, so check it here too.
        for cert in (*material.anchors, *material.intermediates, *material.certificates):
            check_certificate(cert, material.describe(cert))
        for crl in material.crls:
            check_crl(crl, material.describe(crl))
        self.require_crl = require_crl
        try:
            self._store = verification.Store(list(material.anchors))
        except PARSE_ERRORS as exc:
            raise TrustStoreError(f"unusable trust anchor: {type(exc).__name__}") from exc
        self._intermediates = list(material.intermediates)
        issuers = [*material.anchors, *material.intermediates]
        self._revocations = index_crls(material, issuers)
        signing: dict[bytes, SigningCert] = {}
        encryption: dict[str, list[EncryptionCert]] = {}
        for cert in material.certificates:
            try:
                entry = classify(cert, issuers, mlkem_oid)
            except TrustStoreError as exc:
                raise TrustStoreError(f"{material.describe(cert)}: {exc}") from exc
            if isinstance(entry, SigningCert):
                signing[entry.peer.kid] = entry
            elif isinstance(entry, EncryptionCert):
                encryption.setdefault(entry.peer.identity, []).append(entry)
        self._signing = signing
        # Newest first, so the first valid one is the one to encrypt to.
        self._encryption = {
            name: tuple(sorted(es, key=lambda e: e.peer.cert.not_valid_before_utc, reverse=True))
            for name, es in encryption.items()
        }
        self._verdicts: dict[bytes, _CachedVerdict] = {}
        self._lock = threading.Lock()

    def _check(self, entry: PeerCert, now_ms: int, *, signing: bool) -> None:
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
                raise StaleTrustError("CRL is past its nextUpdate")
            if entry.cert.serial_number in revocation.serials:
                raise RevokedSignerError(f"serial {entry.cert.serial_number:x} is revoked")
            until = min(until, revocation.next_update_ms)
        elif self.require_crl:
            raise StaleTrustError("no CRL for the issuing CA")
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

    def _verify_chain(self, entry: PeerCert, now_ms: int, *, signing: bool) -> str | None:
        """Return why the chain fails, or None when it verifies."""
        try:
            # The verifier tolerates some malformed extensions (an unparsable AKI); we do not.
            check_certificate(entry.cert, "the signer's chain")
        except TrustStoreError as exc:
            return str(exc)

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
        except PARSE_ERRORS as exc:
            # A malformed extension anywhere in the chain is an untrusted signer, not a crash.
            return f"chain cannot be parsed: {type(exc).__name__}"
        if x509.DNSName(entry.identity) not in (verified.subjects or []):
            return "verified subjects do not name the identity"
        return None

    def signing_cert(self, kid: bytes, now_ms: int) -> VerifiedSigner:
        entry = self._signing.get(kid)
        if entry is None:
            raise UntrustedSignerError("unknown signer key id")
        self._check(entry.peer, now_ms, signing=True)
        return VerifiedSigner(entry.peer.identity, entry.public_key)

    def encryption_key_for(self, identity: str, suite: Suite, now_ms: int) -> RecipientKey:
        """The newest trusted encryption key of ``identity`` for the suite's KEM."""
        stale: StaleTrustError | None = None
        for entry in self._encryption.get(identity, ()):
            if entry.kem is not suite.kem:
                continue
            try:
                self._check(entry.peer, now_ms, signing=False)
            except StaleTrustError as exc:
                stale = exc
                continue
            except UntrustedSignerError:
                continue
            return RecipientKey(identity, entry.peer.kid, entry.public_key)
        if stale is not None:
            raise stale  # our lapsed CRL, not the peer's certificate
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
        if material is None and loader is None:
            raise TrustStoreError("a trust store needs material or a loader")
        self._snapshot = self._build(material)

    def _build(self, material: TrustMaterial | None) -> TrustSnapshot:
        """A snapshot of ``material``, else of what the loader reads; errors are TrustStoreError."""
        try:
            if material is None:
                if self._loader is None:
                    raise TrustStoreError("a trust store needs material or a loader")
                material = self._loader()
            return TrustSnapshot(material, require_crl=self._require_crl, mlkem_oid=self._mlkem_oid)
        except PARSE_ERRORS as exc:
            # Whatever cryptography raises while loading or classifying is a load error.
            raise TrustStoreError(
                f"trust material unusable: {type(exc).__name__}: {str(exc)[:160]}"
            ) from exc

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
        fresh = self._build(None)
        # One reference assignment: concurrent readers see the old or the new snapshot whole.
        self._snapshot = fresh

    def signing_cert(self, kid: bytes, now_ms: int) -> VerifiedSigner:
        return self._snapshot.signing_cert(kid, now_ms)

    def encryption_key_for(self, identity: str, suite: Suite, now_ms: int) -> RecipientKey:
        return self._snapshot.encryption_key_for(identity, suite, now_ms)


__all__ = [
    "DEFAULT_MLKEM_EXTENSION_OID",
    "MLKEM768_PUBLIC_KEY_LEN",
    "TrustMaterial",
    "TrustSnapshot",
    "TrustStore",
    "load_directory",
    "load_material",
]
