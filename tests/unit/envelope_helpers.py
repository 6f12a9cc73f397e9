"""Test helpers for the envelope and trust-store tests: an in-memory PKI built with infra.pki.

Everything is real: real keys, real certificates issued by ``infra.pki``, a real CRL. The clock
is a fixed instant so that validity periods and the timestamp window are exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519

from broker_adapter.envelope import EnvelopePolicy
from broker_adapter.identity import LocalIdentity, RecipientKey, kid_of
from broker_adapter.suites import SUITES, KemPrivateKey, SigningPrivateKey
from broker_adapter.trust import TrustMaterial, TrustStore
from infra import pki

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
DAY_MS = 24 * 3600 * 1000

ALL_SUITES = frozenset(SUITES)
POLICY = EnvelopePolicy(allowed_suites=ALL_SUITES)


# The key usage of a message-signing certificate, for tests that build their own.
SIGN_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)

def fixed_clock(ms: int = NOW_MS) -> Callable[[], int]:
    return lambda: ms


def counter_rng(start: int = 1) -> Callable[[int], bytes]:
    """Deterministic, distinct outputs: enough for ids in tests (never for keys)."""
    counter = itertools.count(start)

    def rng(n: int) -> bytes:
        return next(counter).to_bytes(n, "big")

    return rng


@dataclass
class Party:
    name: str
    sign_key: SigningPrivateKey
    sign_cert: x509.Certificate
    enc_keys: list[tuple[x509.Certificate, KemPrivateKey]] = field(default_factory=list)

    @property
    def identity(self) -> LocalIdentity:
        return LocalIdentity.from_certificates(
            self.name,
            signing_key=self.sign_key,
            signing_cert=self.sign_cert,
            decryption_keys=self.enc_keys,
        )

    @property
    def certificates(self) -> list[x509.Certificate]:
        return [self.sign_cert, *(c for c, _ in self.enc_keys)]

    def recipient_key(self, suite_name: str) -> RecipientKey:
        """The public key for ``suite_name`` taken from this party's newest matching cert."""
        suite = SUITES[suite_name]
        for cert, key in reversed(self.enc_keys):
            if suite.accepts_kem_key(key):
                return RecipientKey(self.name, kid_of(cert), key.public_key())
        raise LookupError(suite_name)


class TestPki:
    """A deployment CA issuing party key sets at chosen validity periods."""

    __test__ = False  # not a test class, despite its name

    def __init__(self, name: str = "Test CA", *, now: datetime = NOW) -> None:
        self.now = now
        self.ca_cert, self.ca_key = pki.create_ca(name, now=now - timedelta(days=365))

    def _issue(
        self, name: str, purpose: pki.Purpose, public_key: object, **kw: object
    ) -> x509.Certificate:
        return pki.issue_cert(
            self.ca_cert,
            self.ca_key,
            identity=name,
            purpose=purpose,
            public_key=public_key,  # type: ignore[arg-type]
            now=self.now,
            **kw,  # type: ignore[arg-type]
        )

    def signing_cert(
        self, name: str, *, alg: str = "p256", **kw: object
    ) -> tuple[SigningPrivateKey, x509.Certificate]:
        key: SigningPrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if alg == "p256"
            else ed25519.Ed25519PrivateKey.generate()
        )
        return key, self._issue(name, "sign", key.public_key(), **kw)

    def enc_cert(self, name: str, **kw: object) -> tuple[x509.Certificate, KemPrivateKey]:
        key = x25519.X25519PrivateKey.generate()
        return self._issue(name, "enc", key.public_key(), **kw), key

    def enc_pq_cert(self, name: str, **kw: object) -> tuple[x509.Certificate, KemPrivateKey]:
        m = mlkem.MLKEM768PrivateKey.generate()
        x = x25519.X25519PrivateKey.generate()
        cert = self._issue(
            name,
            "enc-pq",
            x.public_key(),
            mlkem_public_bytes=m.public_key().public_bytes_raw(),
            **kw,
        )
        return cert, hpke.MLKEM768X25519PrivateKey(m, x)

    def party(self, name: str, *, alg: str = "p256", **sign_kw: object) -> Party:
        sign_key, sign_cert = self.signing_cert(name, alg=alg, **sign_kw)
        return Party(name, sign_key, sign_cert, [self.enc_cert(name), self.enc_pq_cert(name)])

    def crl(
        self, revoked: Iterable[int] = (), *, now: datetime | None = None, days: int = 7
    ) -> x509.CertificateRevocationList:
        return pki.build_crl(self.ca_cert, self.ca_key, revoked, now=now or self.now, days=days)

    def material(
        self,
        certificates: Iterable[x509.Certificate],
        *,
        revoked: Iterable[int] = (),
        crl: x509.CertificateRevocationList | None = None,
    ) -> TrustMaterial:
        return TrustMaterial(
            anchors=(self.ca_cert,),
            crls=(crl if crl is not None else self.crl(revoked),),
            certificates=tuple(certificates),
        )

    def trust(
        self,
        parties: Iterable[Party],
        *,
        revoked: Iterable[int] = (),
        extra: Iterable[x509.Certificate] = (),
        crl_days: int = 7,
    ) -> TrustStore:
        certs = [c for p in parties for c in p.certificates] + list(extra)
        crl = self.crl(revoked, days=crl_days)
        return TrustStore.from_material(self.material(certs, crl=crl))


@dataclass
class World:
    """The network and two AFs under one test CA, with a trust store for all three."""

    pki: TestPki
    network: Party
    af1: Party
    af2: Party
    trust: TrustStore


def three_party_world(*, af1_alg: str = "p256") -> World:
    ca = TestPki()
    network = ca.party("network")
    af1 = ca.party("af1.example.com", alg=af1_alg)
    af2 = ca.party("af2.example.com")
    return World(ca, network, af1, af2, ca.trust([network, af1, af2]))

