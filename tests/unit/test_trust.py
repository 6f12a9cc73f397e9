"""Trust store: chains, key usage, CRLs, lookups, caching limits and reload from disk."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker_adapter import envelope_errors as errors
from broker_adapter.envelope import open_envelope, seal
from broker_adapter.identity import kid_of, load_local_identity
from broker_adapter.suites import DEFAULT_SUITE, SUITES
from broker_adapter.trust import TrustMaterial, TrustStore
from infra import pki
from tests.unit.envelope_helpers import (
    DAY_MS,
    NOW,
    NOW_MS,
    POLICY,
    TestPki,
    counter_rng,
    fixed_clock,
)

PQ = SUITES["AKMA1-P256-MLKEM768X25519-A256GCM"]


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    pki.ensure_dev_pki(root, afs=["af1.example.com"], now=NOW)
    return root


def test_directory_store_serves_every_party(pki_dir: Path) -> None:
    store = TrustStore.from_directory(pki_dir)
    for name in ("network", "af1.example.com"):
        sign_cert = pki.load_certificate(pki_dir / "parties" / name / "sign.crt")
        signer = store.signing_cert(pki.kid(sign_cert), NOW_MS)
        assert signer.identity == name
        assert signer.public_key == sign_cert.public_key()
        enc = store.encryption_key_for(name, DEFAULT_SUITE, NOW_MS)
        assert enc.kid == pki.kid(pki.load_certificate(pki_dir / "parties" / name / "enc.crt"))
        pq = store.encryption_key_for(name, PQ, NOW_MS)
        assert pq.kid == pki.kid(pki.load_certificate(pki_dir / "parties" / name / "enc-pq.crt"))
    assert store.snapshot.identities() == {"network", "af1.example.com"}


def test_tls_and_encryption_certs_are_not_signing_keys(pki_dir: Path) -> None:
    store = TrustStore.from_directory(pki_dir)
    party = pki_dir / "parties" / "network"
    for name in ("tls.crt", "enc.crt", "enc-pq.crt"):
        with pytest.raises(errors.UntrustedSignerError, match="unknown signer"):
            store.signing_cert(kid_of(pki.load_certificate(party / name)), NOW_MS)


@pytest.mark.parametrize("suite", sorted(s for s in SUITES if "ED25519" not in s))
def test_identities_loaded_from_files_round_trip(pki_dir: Path, suite: str) -> None:
    store = TrustStore.from_directory(pki_dir)
    network = load_local_identity(pki_dir / "parties" / "network", "network")
    af1 = load_local_identity(pki_dir / "parties" / "af1.example.com", "af1.example.com")
    data = seal(
        suite=suite,
        identity=af1,
        recipient=store.encryption_key_for("network", SUITES[suite], NOW_MS),
        msg_type="akma.test",
        body=b"k",
        clock=fixed_clock(),
        rng=counter_rng(),
    )
    opened = open_envelope(
        data,
        me=network,
        trust=store,
        now_ms=NOW_MS,
        policy=POLICY,
        broker_user_id="af1.example.com",
    )
    assert opened.body == b"k" and opened.suite == suite


def test_reload_sees_revocation_and_bad_reload_keeps_old_snapshot(
    tmp_path: Path,
) -> None:
    pki.ensure_dev_pki(tmp_path, afs=["af1.example.com"], now=NOW)
    store = TrustStore.from_directory(tmp_path)
    cert = pki.load_certificate(tmp_path / "parties" / "af1.example.com" / "sign.crt")
    assert store.signing_cert(kid_of(cert), NOW_MS).identity == "af1.example.com"
    pki.revoke(tmp_path, cert, now=NOW)
    # Still the old snapshot until reload() is called: no file I/O on the lookup path.
    assert store.signing_cert(kid_of(cert), NOW_MS).identity == "af1.example.com"
    store.reload()
    with pytest.raises(errors.RevokedSignerError):
        store.signing_cert(kid_of(cert), NOW_MS)
    before = store.snapshot
    (tmp_path / "ca" / "crl.pem").write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n")
    with pytest.raises(errors.TrustStoreError):
        store.reload()
    assert store.snapshot is before


def test_reload_picks_up_new_and_removed_certificates(tmp_path: Path) -> None:
    pki.ensure_dev_pki(tmp_path, afs=[], now=NOW)
    store = TrustStore.from_directory(tmp_path)
    ca_cert = pki.load_certificate(tmp_path / "ca" / "ca.crt")
    ca_key = pki.load_ca_key(tmp_path / "ca" / "ca.key")
    key = ec.generate_private_key(ec.SECP256R1())
    new = pki.issue_cert(
        ca_cert, ca_key, identity="network", purpose="sign", public_key=key.public_key(), now=NOW
    )
    path = tmp_path / "parties" / "network" / "sign-next.crt"
    path.write_bytes(new.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(errors.UntrustedSignerError):
        store.signing_cert(kid_of(new), NOW_MS)
    store.reload()
    assert store.signing_cert(kid_of(new), NOW_MS).identity == "network"
    path.unlink()
    store.reload()
    with pytest.raises(errors.UntrustedSignerError):
        store.signing_cert(kid_of(new), NOW_MS)


def test_from_paths(pki_dir: Path) -> None:
    party = pki_dir / "parties" / "network"
    store = TrustStore.from_paths(
        cas=[pki_dir / "ca" / "ca.crt"],
        crls=[pki_dir / "ca" / "crl.pem"],
        certificates=[party / "sign.crt"],
    )
    assert store.signing_cert(kid_of(pki.load_certificate(party / "sign.crt")), NOW_MS)


def test_stale_crl_and_missing_crl_fail_closed() -> None:
    ca = TestPki()
    party = ca.party("p.example.com")
    kid = party.identity.signing_kid
    store = ca.trust([party], crl_days=1)
    assert store.signing_cert(kid, NOW_MS)  # cached as good here ...
    with pytest.raises(errors.UntrustedSignerError, match="nextUpdate"):
        store.signing_cert(kid, NOW_MS + 2 * DAY_MS)  # ... but not past the CRL's nextUpdate
    no_crl = TrustStore.from_material(TrustMaterial((ca.ca_cert,), (), tuple(party.certificates)))
    with pytest.raises(errors.UntrustedSignerError, match="no CRL"):
        no_crl.signing_cert(kid, NOW_MS)
    lax = TrustStore.from_material(
        TrustMaterial((ca.ca_cert,), (), tuple(party.certificates)), require_crl=False
    )
    assert lax.signing_cert(kid, NOW_MS).identity == "p.example.com"


def test_crl_from_a_foreign_ca_is_a_load_error() -> None:
    ca, other = TestPki(), TestPki("Test CA")  # same name, different key
    party = ca.party("p.example.com")
    with pytest.raises(errors.TrustStoreError, match="CRL signature"):
        TrustStore.from_material(ca.material(party.certificates, crl=other.crl()))


def test_cached_good_verdict_ends_at_certificate_expiry() -> None:
    ca = TestPki()
    party = ca.party("p.example.com", days=3)
    store = ca.trust([party], crl_days=30)
    kid = party.identity.signing_kid
    assert store.signing_cert(kid, NOW_MS)
    with pytest.raises(errors.ExpiredSignerError):
        store.signing_cert(kid, NOW_MS + 4 * DAY_MS)


def test_cached_bad_verdict_is_stable() -> None:
    # The foreign CA has the same name as ours, so only the signature check can tell them apart.
    ca, foreign = TestPki(), TestPki("Test CA")
    impostor = foreign.party("p.example.com")
    store = ca.trust([], extra=impostor.certificates)
    for _ in range(3):
        with pytest.raises(errors.UntrustedSignerError, match="chain") as info:
            store.signing_cert(impostor.identity.signing_kid, NOW_MS)
        # A new exception object each time, so tracebacks do not pile up.
        assert info.value.__traceback__ is not None


def test_encryption_key_for_skips_expired_and_revoked() -> None:
    ca = TestPki()
    sign_key, sign_cert = ca.signing_cert("p.example.com")
    old = ca.enc_cert(
        "p.example.com", not_before=NOW - timedelta(days=10), not_after=NOW + timedelta(days=400)
    )
    new = ca.enc_cert(
        "p.example.com", not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=5)
    )
    certs = [sign_cert, old[0], new[0]]
    store = TrustStore.from_material(ca.material(certs, crl=ca.crl(days=30)))
    assert store.encryption_key_for("p.example.com", DEFAULT_SUITE, NOW_MS).kid == kid_of(new[0])
    # After the newest one expires, the still-valid older key is chosen.
    later = NOW_MS + 6 * DAY_MS
    assert store.encryption_key_for("p.example.com", DEFAULT_SUITE, later).kid == kid_of(old[0])
    revoked = TrustStore.from_material(ca.material(certs, revoked=[new[0].serial_number]))
    assert revoked.encryption_key_for("p.example.com", DEFAULT_SUITE, NOW_MS).kid == kid_of(old[0])
    with pytest.raises(errors.NoRecipientKeyError):
        store.encryption_key_for("p.example.com", PQ, NOW_MS)
    with pytest.raises(errors.NoRecipientKeyError):
        store.encryption_key_for("nobody.example.com", DEFAULT_SUITE, NOW_MS)
    del sign_key
