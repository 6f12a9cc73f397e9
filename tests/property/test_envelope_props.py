"""Property tests: tampering is always detected, and hostile bytes only raise EnvelopeError.

Every suite is sampled, per-message and epoch (``*-E``) alike; epoch envelopes are also
tampered with while the receiver already holds their epoch key, so that the AES-GCM layer
alone must catch the change.
"""

from __future__ import annotations

import contextlib
import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_adapter.envelope import EnvelopeError, open_envelope, seal_envelope
from broker_adapter.epoch import EpochKeyCache, SenderEpochs
from broker_adapter.suites import DEFAULT_SUITE_NAME, SUITES
from tests.unit.envelope_helpers import NOW_MS, POLICY, TestPki, counter_rng, fixed_clock

_CA = TestPki()
_SENDER = _CA.party("af1.example.com")
_ME = _CA.party("network")
_TRUST = _CA.trust([_SENDER, _ME])
_SUITES = sorted(s for s in SUITES if "ED25519" not in s)
_SAMPLES = {
    suite: seal_envelope(
        suite=suite,
        identity=_SENDER.identity,
        recipient=_ME.recipient_key(suite),
        msg_type="akma.test",
        body=b"sample body",
        correlation_id=b"c" * 16,
        clock=fixed_clock(),
        rng=counter_rng(),
    ).data
    for suite in _SUITES
}
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _open(data: bytes, cache: EpochKeyCache | None = None) -> object:
    return open_envelope(
        data, me=_ME.identity, trust=_TRUST, now_ms=NOW_MS, policy=POLICY, epoch_cache=cache
    )


# Two messages of one epoch of the default (epoch) suite, and a receiver cache that already
# holds its key: flips must also be caught when no HPKE open runs at all.
_EPOCHS = SenderEpochs()
_EPOCH_PAIR = [
    seal_envelope(
        identity=_SENDER.identity,
        recipient=_ME.recipient_key(DEFAULT_SUITE_NAME),
        msg_type="akma.test",
        body=body,
        clock=fixed_clock(),
        rng=counter_rng(100 * i + 1),
        epochs=_EPOCHS,
    ).data
    for i, body in enumerate([b"first", b"second"])
]
_WARM = EpochKeyCache()
_open(_EPOCH_PAIR[0], _WARM)


def test_samples_open() -> None:
    for data in _SAMPLES.values():
        _open(data)


@_SETTINGS
@given(suite=st.sampled_from(_SUITES), position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_flipping_any_single_bit_is_rejected(suite: str, position: int, bit: int) -> None:
    data = bytearray(_SAMPLES[suite])
    data[position % len(data)] ^= 1 << bit
    try:
        _open(bytes(data))
    except EnvelopeError:
        return
    raise AssertionError("a tampered envelope was accepted")


@pytest.mark.parametrize("suite", [_SUITES[0], DEFAULT_SUITE_NAME])
def test_flipping_every_bit_of_the_outer_header_is_rejected(suite: str) -> None:
    # Exhaustive over the cleartext header, where a structural mistake would hide; the
    # ciphertext part is covered by the AEAD and sampled above. For an epoch suite the header
    # includes the wrapped key and the nonce (everything but the last field).
    data = _SAMPLES[suite]
    header_len = len(data) - len(msgpack.unpackb(data)[-1])
    for position in range(header_len):
        for bit in range(8):
            mutated = bytearray(data)
            mutated[position] ^= 1 << bit
            try:
                _open(bytes(mutated))
            except EnvelopeError:
                continue
            raise AssertionError(f"flip at byte {position} bit {bit} accepted")


def test_epoch_pair_shares_a_key_and_opens_from_the_cache() -> None:
    assert msgpack.unpackb(_EPOCH_PAIR[0])[4] == msgpack.unpackb(_EPOCH_PAIR[1])[4]
    assert len(_WARM) == 1
    _open(_EPOCH_PAIR[1], _WARM)


@_SETTINGS
@given(position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_flipping_any_bit_under_a_cached_epoch_key_is_rejected(position: int, bit: int) -> None:
    data = bytearray(_EPOCH_PAIR[1])
    data[position % len(data)] ^= 1 << bit
    try:
        _open(bytes(data), _WARM)
    except EnvelopeError:
        assert len(_WARM) == 1  # garbage never adds to (or evicts from) the cache
        return
    raise AssertionError("a tampered epoch envelope was accepted")


@_SETTINGS
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_envelope_error(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        _open(data)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=64),
    st.sampled_from([1, "AKMA1-P256-X25519-A256GCM", "network", b"\x00" * 32]),
)


@_SETTINGS
@given(
    fields=st.lists(
        st.recursive(
            _scalars,
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        ),
        max_size=7,
    )
)
def test_arbitrary_msgpack_arrays_raise_only_envelope_error(fields: list[object]) -> None:
    with contextlib.suppress(EnvelopeError):
        _open(msgpack.packb(fields, use_bin_type=True))


@_SETTINGS
@given(
    body=st.binary(max_size=2048),
    msg_type=st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=64
    ),
    corr=st.none() | st.binary(min_size=16, max_size=16),
    msg_id=st.binary(min_size=16, max_size=16),
    suite=st.sampled_from(_SUITES),
)
def test_round_trip(
    body: bytes, msg_type: str, corr: bytes | None, msg_id: bytes, suite: str
) -> None:
    sealed = seal_envelope(
        suite=suite,
        identity=_SENDER.identity,
        recipient=_ME.recipient_key(suite),
        msg_type=msg_type,
        body=body,
        correlation_id=corr,
        clock=fixed_clock(),
        # The message id is drawn first; epoch suites then draw their key and nonce.
        rng=lambda n: msg_id if n == 16 else os.urandom(n),
    )
    opened = open_envelope(
        sealed.data,
        me=_ME.identity,
        trust=_TRUST,
        now_ms=NOW_MS,
        policy=POLICY,
        expected_correlation_id=corr,
    )
    assert (opened.body, opened.msg_type, opened.correlation_id, opened.msg_id) == (
        body,
        msg_type,
        corr,
        msg_id,
    )
