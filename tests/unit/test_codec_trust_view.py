"""EnvelopeCodec over a tiny in-memory trust view: the pure core needs no file-reading store."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hpke

from broker_adapter import envelope_errors as errors
from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope import VerifiedSigner
from broker_adapter.envelope_errors import OwnCertificateExpiredError, StaleTrustError
from broker_adapter.errors import Fault
from broker_adapter.identity import RecipientKey, kid_of
from broker_adapter.suites import DEFAULT_SUITE_NAME, KemAlgorithm, Suite
from broker_adapter.trust_view import TrustView
from broker_adapter.verdict import Requeue, outcome_for
from tests.unit.envelope_helpers import (
    NOW,
    NOW_MS,
    POLICY,
    Party,
    TestPki,
    counter_rng,
    fixed_clock,
)


class InMemoryTrust:
    """Signers by key id and recipients by name and KEM; no files, no chains, no clock."""

    def __init__(self, parties: list[Party]) -> None:
        self.signers = {
            kid_of(p.sign_cert): VerifiedSigner(p.name, p.sign_key.public_key()) for p in parties
        }
        self.recipients: dict[tuple[str, KemAlgorithm], RecipientKey] = {}
        for party in parties:
            for cert, key in party.enc_keys:
                hybrid = isinstance(key, hpke.MLKEM768X25519PrivateKey)
                kem = KemAlgorithm.MLKEM768_X25519 if hybrid else KemAlgorithm.X25519
                self.recipients[(party.name, kem)] = RecipientKey(
                    party.name, kid_of(cert), key.public_key()
                )

    def signing_cert(self, kid: bytes, now_ms: int) -> VerifiedSigner:
        try:
            return self.signers[kid]
        except KeyError:
            raise errors.UntrustedSignerError("unknown signer key id") from None

    def encryption_key_for(self, identity: str, suite: Suite, now_ms: int) -> RecipientKey:
        try:
            return self.recipients[(identity, suite.kem)]
        except KeyError:
            raise errors.NoRecipientKeyError(f"no key for {identity!r}") from None


def _codec(party: Party, trust: TrustView, start: int) -> EnvelopeCodec:
    return EnvelopeCodec(
        identity=party.identity,
        trust=trust,
        policy=POLICY,
        clock=fixed_clock(),
        rng=counter_rng(start),
        suite=DEFAULT_SUITE_NAME,
    )


def test_codec_round_trip_over_an_in_memory_view() -> None:
    ca = TestPki()
    network, af = ca.party("network"), ca.party("af1.example.com")
    view = InMemoryTrust([network, af])
    af_codec, net_codec = _codec(af, view, 1), _codec(network, view, 1000)
    request = af_codec.encode(recipient="network", msg_type="akma.test", body=b"q")
    got = net_codec.decode(request.data, broker_user_id="af1.example.com")
    assert (got.sender, got.body) == ("af1.example.com", b"q")
    reply = net_codec.encode(
        recipient="af1.example.com", msg_type="akma.test", body=b"a", correlation_id=got.msg_id
    )
    answer = af_codec.decode(reply.data, expected_correlation_id=request.msg_id)
    assert (answer.sender, answer.body) == ("network", b"a")


def test_the_view_decides_whom_to_trust() -> None:
    ca = TestPki()
    network, af = ca.party("network"), ca.party("af1.example.com")
    sealed = _codec(af, InMemoryTrust([network, af]), 1).encode(
        recipient="network", msg_type="akma.test", body=b"q"
    )
    # A receiver whose view does not know the sender refuses the message.
    with pytest.raises(errors.UntrustedSignerError):
        _codec(network, InMemoryTrust([network]), 1000).decode(sealed.data)
    with pytest.raises(errors.NoRecipientKeyError):
        _codec(af, InMemoryTrust([af]), 1).encode(recipient="network", msg_type="t", body=b"")


def test_codec_and_envelope_do_not_import_the_file_reading_store() -> None:
    code = (
        "import sys, broker_adapter.codec, broker_adapter.envelope, broker_adapter.trust_view; "
        "sys.exit('broker_adapter.trust' in sys.modules)"
    )
    root = Path(__file__).parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, check=False)  # noqa: S603 - argv is sys.executable with fixed arguments
    assert result.returncode == 0


def test_sealing_with_our_own_expired_signing_certificate_is_our_fault() -> None:
    ca = TestPki()
    network = ca.party("network")
    lapsed = ca.party("af1.example.com", not_after=NOW - timedelta(seconds=1))
    trust = ca.trust([network, lapsed])
    codec = EnvelopeCodec(identity=lapsed.identity, trust=trust, policy=POLICY,
                          clock=fixed_clock(), rng=counter_rng(1))
    with pytest.raises(OwnCertificateExpiredError) as raised:
        codec.encode(recipient="network", msg_type="akma.t", body=b"x")
    assert raised.value.fault is Fault.LOCAL
    assert isinstance(outcome_for(raised.value), Requeue)


def test_a_lapsed_crl_is_our_fault_when_opening_and_when_sealing() -> None:
    ca = TestPki()
    network, af = ca.party("network"), ca.party("af1.example.com")
    trust = ca.trust([network, af], crl_days=7)
    fresh = EnvelopeCodec(identity=af.identity, trust=trust, policy=POLICY,
                          clock=fixed_clock(), rng=counter_rng(1))
    data = fresh.encode(recipient="network", msg_type="akma.t", body=b"x").data
    later = fixed_clock(NOW_MS + 8 * 86_400_000)  # past the CRL's nextUpdate
    receiver = EnvelopeCodec(identity=network.identity, trust=trust, policy=POLICY, clock=later,
                             rng=counter_rng(5))
    # The signer is checked (step 5) before the timestamp (step 7).
    with pytest.raises(StaleTrustError) as opening:
        receiver.decode(data, broker_user_id="af1.example.com")
    assert opening.value.fault is Fault.LOCAL
    with pytest.raises(StaleTrustError) as sealing:
        receiver.encode(recipient="af1.example.com", msg_type="akma.t", body=b"x")
    assert isinstance(outcome_for(sealing.value), Requeue)
