"""Party names are matched whole: no trailing newline or stray whitespace gives a second
spelling."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker_adapter import envelope_errors as errors
from broker_adapter.envelope import seal
from broker_adapter.identity import LocalIdentity, RecipientKey, is_identity_name, kid_of
from broker_adapter.suites import DEFAULT_SUITE
from infra import pki
from infra.errors import InvalidIdentityError
from tests.unit.envelope_helpers import (
    NOW,
    NOW_MS,
    SIGN_USAGE,
    TestPki,
    counter_rng,
    fixed_clock,
    three_party_world,
)

BAD_NAMES = [
    "network\n",
    "af1.example.com\n",
    "network\r\n",
    "network\r",
    "network ",
    " network",
    "\nnetwork",
    "network\t",
    "\tnetwork",
    "af1.example.com ",
    "network\x00",
    "",
    "a" * 254,
]
GOOD_NAMES = ["network", "af1.example.com", "a", "a-b.c-d", "a" * 63 + "." + "b" * 63]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_is_identity_name_refuses_whitespace_and_newlines(name: str) -> None:
    assert not is_identity_name(name)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_pki_tool_refuses_whitespace_and_newlines(name: str) -> None:
    with pytest.raises(InvalidIdentityError):
        pki.validate_identity(name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_plain_names_are_accepted(name: str) -> None:
    assert is_identity_name(name)
    assert pki.validate_identity(name) == name


def _signing_cert_for_dns(ca: TestPki, dns_name: str) -> x509.Certificate:
    """A signing certificate issued by the test CA for an arbitrary dNSName."""
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "network")]))
        .issuer_name(ca.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.ca_key.public_key()),
            critical=False,
        )
        .add_extension(SIGN_USAGE, critical=True)
        .sign(ca.ca_key, hashes.SHA256())
    )


def test_trust_store_accepts_the_plain_spelling() -> None:
    ca = TestPki()
    cert = _signing_cert_for_dns(ca, "network")
    store = ca.trust([], extra=[cert])
    assert store.signing_cert(kid_of(cert), NOW_MS).identity == "network"


@pytest.mark.parametrize("dns_name", ["network\n", "network ", " network", "af1.example.com\n"])
def test_trust_store_refuses_a_certificate_naming_a_second_spelling(dns_name: str) -> None:
    ca = TestPki()
    cert = _signing_cert_for_dns(ca, dns_name)
    store = ca.trust([], extra=[cert])
    assert store.snapshot.identities() == frozenset()
    with pytest.raises(errors.UntrustedSignerError):
        store.signing_cert(kid_of(cert), NOW_MS)


@pytest.mark.parametrize("name", ["network\n", "af1.example.com\n", "network "])
def test_envelope_refuses_a_second_spelling_of_a_name(name: str) -> None:
    ca = TestPki()
    sender = ca.party("af1.example.com")
    cert, key = ca.enc_cert("network")
    with pytest.raises(errors.InvalidSealInputError):
        seal(
            suite=DEFAULT_SUITE,
            identity=sender.identity,
            recipient=RecipientKey(name, kid_of(cert), key.public_key()),
            msg_type="akma.test",
            body=b"",
            clock=fixed_clock(),
            rng=counter_rng(),
        )
    with pytest.raises(errors.TrustStoreError):
        LocalIdentity(name, sender.sign_key, kid_of(sender.sign_cert))


@pytest.mark.parametrize("msg_type", ["akma.test\n", "akma.test\r", "\takma.test", "akma\x00"])
def test_envelope_refuses_control_characters_in_message_types(msg_type: str) -> None:
    world = three_party_world()
    with pytest.raises(errors.InvalidSealInputError):
        seal(
            suite=DEFAULT_SUITE,
            identity=world.af1.identity,
            recipient=world.network.recipient_key(DEFAULT_SUITE.name),
            msg_type=msg_type,
            body=b"",
            clock=fixed_clock(),
            rng=counter_rng(),
        )
