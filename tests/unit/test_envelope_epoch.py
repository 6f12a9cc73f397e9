"""Epoch suites (``*-E``): one HPKE-wrapped key per peer, AES-256-GCM and a signature per
message."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker_adapter import envelope_errors as errors
from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope import (
    EnvelopePolicy,
    OpenedMessage,
    decrypt_envelope,
    encrypt_inner,
    epoch_aad,
    open_envelope,
    seal,
)
from broker_adapter.epoch import (
    MAX_MESSAGES_PER_KEY,
    EpochKeyCache,
    EpochLimits,
    SenderEpoch,
    SenderEpochs,
)
from broker_adapter.identity import LocalIdentity
from broker_adapter.suites import DEFAULT_SUITE_NAME, SUITES, KeyMode, Suite
from tests.unit.envelope_helpers import (
    NOW_MS,
    POLICY,
    Party,
    TestPki,
    World,
    fixed_clock,
    three_party_world,
)

EPOCH_SUITES = sorted(n for n, s in SUITES.items() if s.mode is KeyMode.EPOCH)
PQ_E = "AKMA1-P256-MLKEM768X25519-A256GCM-E"


@pytest.fixture(scope="module")
def world() -> World:
    return three_party_world()


class Clock:
    def __init__(self, ms: int = NOW_MS) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def _codec(party: Party, world: World, clock: Callable[[], int], **kw: Any) -> EnvelopeCodec:
    return EnvelopeCodec(
        identity=party.identity,
        trust=world.trust,
        policy=POLICY,
        clock=clock,
        rng=os.urandom,
        **kw,
    )


def _fields(data: bytes) -> list[Any]:
    return msgpack.unpackb(data)  # type: ignore[no-any-return]


def _open(data: bytes, me: Party | LocalIdentity, world: World, **kw: Any) -> OpenedMessage:
    identity = me.identity if isinstance(me, Party) else me
    kw.setdefault("now_ms", NOW_MS)
    kw.setdefault("policy", POLICY)
    return open_envelope(data, me=identity, trust=world.trust, **kw)


def _without_hpke(party: Party) -> LocalIdentity:
    """``party`` with the same key ids but WRONG private keys of the same types.

    Opening with it succeeds only if no HPKE open runs, i.e. the epoch key came from the cache.
    """
    identity = party.identity
    wrong = {
        kid: x25519.X25519PrivateKey.generate() if isinstance(key, x25519.X25519PrivateKey) else key
        for kid, key in identity.decryption_keys.items()
    }
    return LocalIdentity(identity.name, identity.signing_key, identity.signing_kid, wrong)


# ---- suites and layout ------------------------------------------------------------------------


def test_default_is_the_epoch_variant_and_every_base_suite_has_one() -> None:
    assert SUITES[DEFAULT_SUITE_NAME].mode is KeyMode.EPOCH
    assert DEFAULT_SUITE_NAME in EnvelopePolicy().allowed_suites
    per_message = {n for n, s in SUITES.items() if s.mode is KeyMode.PER_MESSAGE}
    assert {f"{n}-E" for n in per_message} == set(EPOCH_SUITES)
    assert PQ_E in EPOCH_SUITES


@pytest.mark.parametrize("suite", EPOCH_SUITES)
def test_epoch_layout_and_round_trip(world: World, suite: str) -> None:
    af = world.af1 if "ED25519" not in suite else None
    if af is None:
        ed = world.pki.party("ed.example.com", alg="ed25519")
        trust = world.pki.trust([world.network, ed])
        sender, w = ed, World(world.pki, world.network, ed, world.af2, trust)
    else:
        sender, w = af, world
    data = seal(
        suite=suite,
        identity=sender.identity,
        recipient=world.network.recipient_key(suite),
        msg_type="akma.test",
        body=b"payload",
        clock=fixed_clock(),
        rng=os.urandom,
    )
    fields = _fields(data)
    assert len(fields) == 7
    assert len(fields[4]) == SUITES[suite].wrapped_key_len
    assert len(fields[5]) == 12
    opened = _open(data, world.network, w, broker_user_id=sender.name)
    assert (opened.body, opened.suite, opened.sender) == (b"payload", suite, sender.name)


# ---- amortisation -----------------------------------------------------------------------------


@pytest.mark.parametrize("suite", [DEFAULT_SUITE_NAME, PQ_E])
def test_many_messages_share_one_epoch_and_one_hpke_open(world: World, suite: str) -> None:
    clock = Clock()
    sender = _codec(world.af1, world, clock, suite=suite)
    sealed = [
        sender.encode(recipient="network", msg_type="akma.t", body=b"%d" % i) for i in range(50)
    ]
    wrapped = {_fields(s.data)[4] for s in sealed}
    nonces = {_fields(s.data)[5] for s in sealed}
    assert len(wrapped) == 1 and len(nonces) == 50
    cache = EpochKeyCache()
    first = _open(sealed[0].data, world.network, world, epoch_cache=cache)
    assert first.body == b"0" and len(cache) == 1
    # Every later message opens with keys that would make any HPKE open fail: the epoch key
    # came from the cache, so HPKE ran once for the whole epoch.
    blind = _without_hpke(world.network) if suite == DEFAULT_SUITE_NAME else None
    for i, s in enumerate(sealed[1:], start=1):
        me = blind if blind is not None else world.network.identity
        assert _open(s.data, me, world, epoch_cache=cache).body == b"%d" % i
    assert len(cache) == 1
    if blind is not None:
        # The same message without the cache does need HPKE, which the wrong key fails.
        with pytest.raises(errors.DecryptionFailedError):
            _open(sealed[1].data, blind, world)


def test_epoch_rolls_over_by_count(world: World) -> None:
    sender = _codec(world.af1, world, Clock(), epoch_limits=EpochLimits(max_messages=3))
    blobs = [
        _fields(sender.encode(recipient="network", msg_type="t", body=b"").data)[4]
        for _ in range(7)
    ]
    assert blobs[0] == blobs[1] == blobs[2] != blobs[3]
    assert blobs[3] == blobs[4] == blobs[5] != blobs[6]


def test_epoch_rolls_over_by_time_and_when_the_clock_goes_back(world: World) -> None:
    clock = Clock()
    sender = _codec(world.af1, world, clock, epoch_limits=EpochLimits(max_age_ms=1000))
    receiver = _codec(world.network, world, clock)

    def blob() -> bytes:
        sealed = sender.encode(recipient="network", msg_type="t", body=b"")
        receiver.decode(sealed.data)
        return bytes(_fields(sealed.data)[4])

    first = blob()
    clock.ms += 999
    assert blob() == first
    clock.ms += 1
    second = blob()
    assert second != first
    clock.ms -= 5000  # a clock step backwards ends the epoch too
    third = blob()
    assert third not in (first, second)
    assert len(receiver.epoch_cache) == 3


def test_new_recipient_key_starts_a_new_epoch(world: World) -> None:
    epochs = SenderEpochs()
    common: dict[str, Any] = {
        "suite": DEFAULT_SUITE_NAME,
        "identity": world.af1.identity,
        "msg_type": "t",
        "body": b"",
        "clock": fixed_clock(),
        "rng": os.urandom,
        "epochs": epochs,
    }
    a = seal(recipient=world.network.recipient_key(DEFAULT_SUITE_NAME), **common)
    b = seal(recipient=world.af2.recipient_key(DEFAULT_SUITE_NAME), **common)
    c = seal(recipient=world.network.recipient_key(DEFAULT_SUITE_NAME), **common)
    assert _fields(a)[4] == _fields(c)[4] != _fields(b)[4]
    assert len(epochs) == 2


def test_a_second_replica_opens_the_same_epoch_out_of_order(world: World) -> None:
    clock = Clock()
    sender = _codec(world.af1, world, clock)
    replica_a = _codec(world.network, world, clock)
    replica_b = _codec(world.network, world, clock)
    sealed = [sender.encode(recipient="network", msg_type="t", body=bytes([i])) for i in range(8)]
    # Competing consumers: each replica sees a shuffled half, then the other's half reversed.
    order_a = [5, 1, 7, 3]
    order_b = [6, 0, 4, 2]
    for i in order_a:
        assert replica_a.decode(sealed[i].data).body == bytes([i])
    for i in order_b:
        assert replica_b.decode(sealed[i].data).body == bytes([i])
    for i in reversed(order_b):
        assert replica_a.decode(sealed[i].data).body == bytes([i])
    assert len(replica_a.epoch_cache) == len(replica_b.epoch_cache) == 1


# ---- tampering and header swaps -----------------------------------------------------------------


@pytest.fixture
def pair(world: World) -> tuple[list[bytes], EpochKeyCache]:
    """Two messages of one epoch from af1 to the network, and a cache warmed by the first."""
    epochs = SenderEpochs()
    out = [
        seal(
            identity=world.af1.identity,
            recipient=world.network.recipient_key(DEFAULT_SUITE_NAME),
            msg_type="t",
            body=body,
            clock=fixed_clock(),
            rng=os.urandom,
            epochs=epochs,
        )
        for body in (b"first", b"second")
    ]
    cache = EpochKeyCache()
    _open(out[0], world.network, world, epoch_cache=cache)
    return out, cache


@pytest.mark.parametrize("warm", [True, False])
@pytest.mark.parametrize("index", [4, 5, 6])
def test_tampered_wrapped_key_nonce_or_ciphertext_is_refused(
    world: World, pair: tuple[list[bytes], EpochKeyCache], warm: bool, index: int
) -> None:
    messages, cache = pair
    fields = _fields(messages[1])
    mutated = bytearray(fields[index])
    mutated[len(mutated) // 2] ^= 0x01
    fields[index] = bytes(mutated)
    with pytest.raises(errors.DecryptionFailedError):
        _open(msgpack.packb(fields), world.network, world, epoch_cache=cache if warm else None)
    assert len(cache) == 1


@pytest.mark.parametrize(
    ("index", "value", "error"),
    [
        (1, "AKMA1-ED25519-X25519-A256GCM-E", errors.DecryptionFailedError),
        (2, "af2.example.com", errors.DecryptionFailedError),
        (3, b"\x00" * 32, errors.NotForMeError),
    ],
)
def test_changed_header_field_is_refused_even_with_the_key_cached(
    world: World, pair: tuple[list[bytes], EpochKeyCache], index: int, value: object, error: type
) -> None:
    messages, cache = pair
    fields = _fields(messages[1])
    fields[index] = value
    with pytest.raises(error):
        _open(msgpack.packb(fields), world.network, world, epoch_cache=cache)


def test_ciphertext_replayed_under_another_outer_header_is_refused(world: World) -> None:
    # The broker (or any client) moves a nonce and ciphertext under another epoch's wrapped key
    # from the same sender, and under an outer header naming another sender.
    epochs_1, epochs_2 = SenderEpochs(), SenderEpochs()
    recipient = world.network.recipient_key(DEFAULT_SUITE_NAME)

    def one(epochs: SenderEpochs) -> list[Any]:
        data = seal(
            identity=world.af1.identity,
            recipient=recipient,
            msg_type="t",
            body=b"x",
            clock=fixed_clock(),
            rng=os.urandom,
            epochs=epochs,
        )
        return _fields(data)

    a, b = one(epochs_1), one(epochs_2)
    cache = EpochKeyCache()
    _open(msgpack.packb(a), world.network, world, epoch_cache=cache)
    _open(msgpack.packb(b), world.network, world, epoch_cache=cache)
    moved = [*b[:5], a[5], a[6]]  # a's message under b's (cached, valid) epoch key
    with pytest.raises(errors.DecryptionFailedError):
        _open(msgpack.packb(moved), world.network, world, epoch_cache=cache)
    # Under a's own wrapped key but relabelled: the aad (and the HPKE info) no longer match.
    relabelled = [a[0], a[1], "af2.example.com", *a[3:]]
    with pytest.raises(errors.DecryptionFailedError):
        _open(msgpack.packb(relabelled), world.network, world, epoch_cache=cache)
    # The unchanged bytes still open: the failures above are the header change alone.
    assert _open(msgpack.packb(a), world.network, world, epoch_cache=cache).body == b"x"


def test_wrong_length_fields_are_malformed_before_any_key_is_touched(world: World) -> None:
    class Trap:
        name = "network"

        def decryption_key(self, kid: bytes, suite: Suite) -> Any:
            raise AssertionError("a key was looked up")

        def signing_cert(self, kid: bytes, now_ms: int) -> Any:
            raise AssertionError("a certificate was looked up")

    good = _fields(
        seal(
            identity=world.af1.identity,
            recipient=world.network.recipient_key(DEFAULT_SUITE_NAME),
            msg_type="t",
            body=b"",
            clock=fixed_clock(),
            rng=os.urandom,
        )
    )
    for index, value in [(4, good[4][:-1]), (5, good[5] + b"\x00"), (6, b"\x00" * 15)]:
        bad = list(good)
        bad[index] = value
        with pytest.raises(errors.MalformedEnvelopeError):
            open_envelope(msgpack.packb(bad), me=Trap(), trust=Trap(), now_ms=NOW_MS, policy=POLICY)
    # A per-message layout labelled with an epoch suite (and the reverse) is malformed too.
    with pytest.raises(errors.MalformedEnvelopeError):
        open_envelope(
            msgpack.packb(good[:5]), me=Trap(), trust=Trap(), now_ms=NOW_MS, policy=POLICY
        )


def test_recipient_key_check_runs_before_the_cache(
    world: World, pair: tuple[list[bytes], EpochKeyCache]
) -> None:
    # The network retired the key the epoch was wrapped to: a cached epoch key must not keep
    # messages to that key acceptable.
    messages, cache = pair
    identity = world.network.identity
    retired = LocalIdentity(identity.name, identity.signing_key, identity.signing_kid, {})
    with pytest.raises(errors.NotForMeError):
        _open(messages[1], retired, world, epoch_cache=cache)


def test_surreptitious_forwarding_under_an_epoch_suite(world: World) -> None:
    original = seal(
        identity=world.network.identity,
        recipient=world.af2.recipient_key(DEFAULT_SUITE_NAME),
        msg_type="t",
        body=b"for af2",
        clock=fixed_clock(),
        rng=os.urandom,
    )
    inner = decrypt_envelope(original, me=world.af2.identity, policy=POLICY)
    forwarded = encrypt_inner(
        inner,
        suite=SUITES[DEFAULT_SUITE_NAME],
        sender="network",
        recipient=world.af1.recipient_key(DEFAULT_SUITE_NAME),
        rng=os.urandom,
        now_ms=NOW_MS,
    )
    cache = EpochKeyCache()
    with pytest.raises(errors.IdentityMismatchError, match="another recipient"):
        _open(forwarded, world.af1, world, epoch_cache=cache)
    assert len(cache) == 0  # a failed message never leaves its epoch key behind


# ---- the receiver cache -----------------------------------------------------------------------


def test_unverified_epochs_never_enter_the_cache(world: World) -> None:
    stranger = world.pki.party("stranger.example.com")  # valid CA, but not in the trust store
    cache = EpochKeyCache()
    data = seal(
        identity=stranger.identity,
        recipient=world.network.recipient_key(DEFAULT_SUITE_NAME),
        msg_type="t",
        body=b"",
        clock=fixed_clock(),
        rng=os.urandom,
    )
    with pytest.raises(errors.UntrustedSignerError):
        _open(data, world.network, world, epoch_cache=cache)
    # A validly wrapped key carrying a non-verifying signature stays out as well.
    forger = LocalIdentity("af1.example.com", world.af2.sign_key, world.af1.identity.signing_kid)
    forged = seal(
        identity=forger,
        recipient=world.network.recipient_key(DEFAULT_SUITE_NAME),
        msg_type="t",
        body=b"",
        clock=fixed_clock(),
        rng=os.urandom,
    )
    with pytest.raises(errors.BadSignatureError):
        _open(forged, world.network, world, epoch_cache=cache)
    assert len(cache) == 0


def test_cache_is_bounded_lru_and_entries_expire() -> None:
    cache = EpochKeyCache(max_entries=2, ttl_ms=1000)
    keys = [AESGCM(bytes([i]) * 32) for i in range(3)]
    cache.put(b"a", keys[0], 0)
    cache.put(b"b", keys[1], 0)
    assert cache.get(b"a", 10) is keys[0]  # "a" is now the most recently used
    cache.put(b"c", keys[2], 10)
    assert len(cache) == 2 and b"b" not in cache and b"a" in cache
    assert cache.get(b"a", 999) is keys[0]
    assert cache.get(b"a", 1000) is None and b"a" not in cache  # expired from insertion time
    assert cache.get(b"c", 1009) is keys[2]
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        EpochKeyCache(max_entries=0)


def test_codec_cache_stays_bounded_under_many_epochs(world: World) -> None:
    clock = Clock()
    receiver = _codec(world.network, world, clock, epoch_cache=EpochKeyCache(max_entries=4))
    sender = _codec(world.af1, world, clock, epoch_limits=EpochLimits(max_messages=1))
    for _ in range(10):
        receiver.decode(sender.encode(recipient="network", msg_type="t", body=b"").data)
    assert len(receiver.epoch_cache) == 4


# ---- the sender state ---------------------------------------------------------------------------


def test_epoch_limits_are_validated() -> None:
    for bad in ({"max_messages": 0}, {"max_messages": MAX_MESSAGES_PER_KEY + 1}, {"max_age_ms": 0}):
        with pytest.raises(ValueError):
            EpochLimits(**bad)
    with pytest.raises(ValueError):
        SenderEpochs(max_peers=0)
    with pytest.raises(ValueError):
        EnvelopeCodec(
            identity=TestPki().party("network").identity,
            trust=TestPki().trust([]),
            policy=POLICY,
            clock=fixed_clock(),
            rng=os.urandom,
            epochs=SenderEpochs(),
            epoch_limits=EpochLimits(),
        )


def test_sender_epochs_count_exactly_across_threads() -> None:
    epochs = SenderEpochs(EpochLimits(max_messages=100), max_peers=1)
    created: list[SenderEpoch] = []

    def create() -> SenderEpoch:
        epoch = SenderEpoch(os.urandom(80), AESGCM(os.urandom(32)), b"", NOW_MS)
        created.append(epoch)
        return epoch

    def work() -> None:
        for _ in range(250):
            epochs.acquire(("s", "a", "b", b"k"), NOW_MS, create)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.uses for e in created] == [100] * 10
    # A second slot evicts the first (max_peers=1); forget() empties the map.
    epochs.acquire(("s", "a", "c", b"k"), NOW_MS, create)
    assert len(epochs) == 1
    epochs.forget()
    assert len(epochs) == 0


def test_epoch_aad_is_the_documented_rule() -> None:
    assert epoch_aad("S", "a.example", "b.example", b"k" * 32) == msgpack.packb(
        ["AKMA-ENVELOPE-AEAD", 1, "S", "a.example", "b.example", b"k" * 32], use_bin_type=True
    )
