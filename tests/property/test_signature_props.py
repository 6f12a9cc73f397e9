"""Property: every P-256 signature the envelope produces is in low-s form."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from broker_adapter.envelope import decrypt_envelope, seal_envelope
from broker_adapter.suites import SUITES
from tests.unit.envelope_helpers import POLICY, TestPki, fixed_clock

P256_HALF_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551 // 2

_CA = TestPki()
_SENDER = _CA.party("af1.example.com")
_ME = _CA.party("network")


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=256),
    msg_id=st.binary(min_size=16, max_size=16),
    suite=st.sampled_from(sorted(s for s in SUITES if "P256" in s)),
)
def test_sealed_signatures_are_low_s(body: bytes, msg_id: bytes, suite: str) -> None:
    sealed = seal_envelope(
        suite=suite,
        identity=_SENDER.identity,
        recipient=_ME.recipient_key(suite),
        msg_type="akma.test",
        body=body,
        clock=fixed_clock(),
        rng=lambda n: msg_id if n == 16 else os.urandom(n),
    )
    inner = decrypt_envelope(sealed.data, me=_ME.identity, policy=POLICY)
    assert int.from_bytes(inner[-32:], "big") <= P256_HALF_ORDER
