"""EnvelopeCodec: the thin encode/decode wrapper the transport calls."""

from __future__ import annotations

import os

import pytest

from broker_adapter import envelope_errors as errors
from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope import EnvelopePolicy
from broker_adapter.epoch import EpochKeyCache
from broker_adapter.suites import DEFAULT_SUITE_NAME, SUITES
from tests.unit.envelope_helpers import POLICY, TestPki, counter_rng, fixed_clock


@pytest.mark.parametrize(
    "suite",
    [
        DEFAULT_SUITE_NAME,
        "AKMA1-P256-X25519-A256GCM",
        "AKMA1-P256-MLKEM768X25519-A256GCM",
        "AKMA1-P256-MLKEM768X25519-A256GCM-E",
    ],
)
def test_request_and_response_through_two_codecs(suite: str) -> None:
    ca = TestPki()
    network, af = ca.party("network"), ca.party("af1.example.com")
    trust = ca.trust([network, af])
    clock = fixed_clock()
    af_codec = EnvelopeCodec(
        identity=af.identity,
        trust=trust,
        policy=POLICY,
        clock=clock,
        rng=counter_rng(1),
        suite=suite,
    )
    net_codec = EnvelopeCodec(
        identity=network.identity,
        trust=trust,
        policy=POLICY,
        clock=clock,
        rng=counter_rng(1000),
        suite=suite,
    )
    request = af_codec.encode(recipient="network", msg_type="akma.key_request", body=b"q")
    got = net_codec.decode(request.data, broker_user_id="af1.example.com")
    assert (got.sender, got.body, got.msg_id, got.suite) == (
        "af1.example.com",
        b"q",
        request.msg_id,
        suite,
    )
    response = net_codec.encode(
        recipient="af1.example.com",
        msg_type="akma.key_response",
        body=b"a",
        correlation_id=got.msg_id,
    )
    answer = af_codec.decode(
        response.data, broker_user_id="network", expected_correlation_id=request.msg_id
    )
    assert answer.body == b"a" and answer.correlation_id == request.msg_id


def test_codec_refuses_a_sending_suite_outside_its_policy() -> None:
    ca = TestPki()
    network = ca.party("network")
    with pytest.raises(errors.UnsupportedSuiteError):
        EnvelopeCodec(
            identity=network.identity,
            trust=ca.trust([network]),
            policy=EnvelopePolicy(),
            clock=fixed_clock(),
            rng=counter_rng(),
            suite="AKMA1-ED25519-X25519-A256GCM",
        )
    assert "AKMA1-ED25519-X25519-A256GCM" in SUITES


def test_codec_reports_unknown_recipient() -> None:
    ca = TestPki()
    network = ca.party("network")
    codec = EnvelopeCodec(
        identity=network.identity,
        trust=ca.trust([network]),
        policy=POLICY,
        clock=fixed_clock(),
        rng=counter_rng(),
    )
    with pytest.raises(errors.NoRecipientKeyError):
        codec.encode(recipient="nobody.example.com", msg_type="t", body=b"")


def test_codec_shares_injected_epoch_state_and_keeps_one_epoch_per_peer() -> None:
    ca = TestPki()
    network, af = ca.party("network"), ca.party("af1.example.com")
    trust = ca.trust([network, af])
    cache = EpochKeyCache(max_entries=8)
    sender = EnvelopeCodec(
        identity=af.identity, trust=trust, policy=POLICY, clock=fixed_clock(), rng=os.urandom
    )
    # Two receiving codecs (two replicas in one process) sharing one injected cache.
    receivers = [
        EnvelopeCodec(
            identity=network.identity,
            trust=trust,
            policy=POLICY,
            clock=fixed_clock(),
            rng=os.urandom,
            epoch_cache=cache,
        )
        for _ in range(2)
    ]
    for i in range(6):
        sealed = sender.encode(recipient="network", msg_type="t", body=bytes([i]))
        assert receivers[i % 2].decode(sealed.data).body == bytes([i])
    assert len(sender.epochs) == 1 and len(cache) == 1
    assert receivers[0].epoch_cache is receivers[1].epoch_cache is cache
