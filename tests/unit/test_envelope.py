"""Envelope v1: round trips, the order of checks and the attacks of issue 3."""

from __future__ import annotations

import hashlib
import os
from typing import Any, NoReturn

import msgpack
import pytest

from broker_adapter import envelope_errors as errors
from broker_adapter.envelope import (
    EnvelopePolicy,
    OpenedMessage,
    VerifiedSigner,
    build_signed_inner,
    decrypt_envelope,
    encrypt_inner,
    open_envelope,
    seal,
    seal_envelope,
)
from broker_adapter.errors import BrokerAdapterError, Fault
from broker_adapter.identity import LocalIdentity, kid_of
from broker_adapter.suites import (
    DEFAULT_SUITE_NAME,
    PER_MESSAGE_DEFAULT_SUITE_NAME,
    SUITES,
    Suite,
)
from broker_adapter.trust import TrustStore
from tests.unit.envelope_helpers import (
    ALL_SUITES,
    DAY_MS,
    NOW_MS,
    POLICY,
    Party,
    TestPki,
    World,
    counter_rng,
    fixed_clock,
    three_party_world,
)

SUITE_NAMES = sorted(SUITES)
# The default suite and its sibling in the other key mode: header attacks run against both.
BOTH_MODES = [DEFAULT_SUITE_NAME, PER_MESSAGE_DEFAULT_SUITE_NAME]


@pytest.fixture(scope="module")
def world() -> World:
    # af1 signs with Ed25519 so that both signature algorithms meet in one world.
    return three_party_world(af1_alg="ed25519")


def _seal(
    sender: Party,
    to: Party,
    *,
    suite: str = DEFAULT_SUITE_NAME,
    body: bytes = b"hello",
    msg_type: str = "akma.test",
    correlation_id: bytes | None = None,
    at_ms: int = NOW_MS,
) -> bytes:
    suite_obj = SUITES[suite]
    identity = sender.identity
    if not suite_obj.accepts_signing_key(identity.signing_key):
        pytest.skip("signing key does not fit this suite")
    return seal(
        suite=suite,
        identity=identity,
        recipient=to.recipient_key(suite),
        msg_type=msg_type,
        body=body,
        correlation_id=correlation_id,
        clock=fixed_clock(at_ms),
        rng=counter_rng(),
    )


def _open(data: bytes, me: Party, trust: TrustStore, **kw: Any) -> OpenedMessage:
    kw.setdefault("now_ms", NOW_MS)
    kw.setdefault("policy", POLICY)
    return open_envelope(data, me=me.identity, trust=trust, **kw)


# ---- round trips


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_round_trip_every_suite(world: World, suite: str) -> None:
    sender = world.af1 if SUITES[suite].signature.value == "ed25519" else world.af2
    corr = bytes(range(16))
    data = _seal(sender, world.network, suite=suite, body=b"\x00\xffbody", correlation_id=corr)
    opened = _open(
        data, world.network, world.trust, broker_user_id=sender.name, expected_correlation_id=corr
    )
    assert opened.body == b"\x00\xffbody"
    assert opened.sender == sender.name
    assert opened.recipient == "network"
    assert opened.msg_type == "akma.test"
    assert opened.correlation_id == corr
    assert opened.suite == suite
    assert opened.timestamp_ms == NOW_MS
    assert len(opened.msg_id) == 16
    assert opened.digest == hashlib.sha256(data).digest()
    assert opened.signer_kid == sender.identity.signing_kid


def test_seal_envelope_reports_msg_id_and_fresh_randomness_changes_it(world: World) -> None:
    a = seal_envelope(
        identity=world.af2.identity,
        recipient=world.network.recipient_key(DEFAULT_SUITE_NAME),
        msg_type="t",
        body=b"",
        clock=fixed_clock(),
        rng=counter_rng(7),
    )
    opened = _open(a.data, world.network, world.trust)
    assert opened.msg_id == a.msg_id == (7).to_bytes(16, "big")
    assert a.timestamp_ms == NOW_MS


def test_empty_body_and_no_correlation(world: World) -> None:
    opened = _open(_seal(world.network, world.af2, body=b""), world.af2, world.trust)
    assert opened.body == b"" and opened.correlation_id is None


# ---- step 1: size and structure


class _Untouchable:
    """Keyring and signer directory that fail the test if anything consults them."""

    name = "network"

    def decryption_key(self, kid: bytes, suite: Suite) -> NoReturn:
        raise AssertionError("a key was looked up")

    def signing_cert(self, kid: bytes, now_ms: int) -> NoReturn:
        raise AssertionError("a certificate was looked up")


def test_oversized_input_is_refused_before_any_key_is_touched(world: World) -> None:
    data = _seal(world.af2, world.network, body=b"x" * 2000)
    trap = _Untouchable()
    policy = EnvelopePolicy(allowed_suites=ALL_SUITES, max_envelope_bytes=len(data) - 1)
    with pytest.raises(errors.EnvelopeTooLargeError):
        open_envelope(data, me=trap, trust=trap, now_ms=NOW_MS, policy=policy)
    # Also a huge buffer of garbage: refused on its length alone, without parsing.
    with pytest.raises(errors.EnvelopeTooLargeError):
        open_envelope(
            b"\xdd" * (POLICY.max_envelope_bytes + 1),
            me=trap,
            trust=trap,
            now_ms=NOW_MS,
            policy=POLICY,
        )
    # The same envelope under a large enough cap does reach the keyring (the trap is real).
    with pytest.raises(AssertionError, match="key was looked up"):
        open_envelope(data, me=trap, trust=trap, now_ms=NOW_MS, policy=POLICY)


@pytest.mark.parametrize(
    "outer",
    [
        b"",
        b"\xc1",
        msgpack.packb({"v": 1}),
        msgpack.packb([]),
        msgpack.packb([1, DEFAULT_SUITE_NAME, "network", b"k" * 32]),
        msgpack.packb([1, DEFAULT_SUITE_NAME, "network", b"k" * 31, b"ct"]),
        msgpack.packb([1, DEFAULT_SUITE_NAME, "Not A Name", b"k" * 32, b"ct"]),
        msgpack.packb([1, DEFAULT_SUITE_NAME, "network", "k" * 32, b"ct"]),
        msgpack.packb([True, DEFAULT_SUITE_NAME, "network", b"k" * 32, b"ct"]),
        msgpack.packb([1, DEFAULT_SUITE_NAME, "network", b"k" * 32, b"ct"]) + b"\x00",
        msgpack.packb([1, DEFAULT_SUITE_NAME, "network", b"k" * 32, msgpack.ExtType(1, b"x")]),
        # A non-canonical encoding of the version (uint8 instead of a fixint).
        b"\x95\xcc\x01" + msgpack.packb([DEFAULT_SUITE_NAME, "network", b"k" * 32, b"ct"])[1:],
    ],
)
def test_malformed_outer_is_refused_before_any_key_is_touched(outer: bytes) -> None:
    trap = _Untouchable()
    with pytest.raises(errors.MalformedEnvelopeError):
        open_envelope(outer, me=trap, trust=trap, now_ms=NOW_MS, policy=POLICY)


# ---- step 2: version and suite


def test_unknown_version_and_unknown_or_disallowed_suite() -> None:
    trap = _Untouchable()
    with pytest.raises(errors.UnsupportedVersionError):
        open_envelope(msgpack.packb([2, "X"]), me=trap, trust=trap, now_ms=NOW_MS, policy=POLICY)
    unknown = msgpack.packb([1, "AKMA1-NONE-NULL", "network", b"k" * 32, b"ct"])
    with pytest.raises(errors.UnsupportedSuiteError):
        open_envelope(unknown, me=trap, trust=trap, now_ms=NOW_MS, policy=POLICY)


def test_known_suite_outside_the_allow_list_is_refused(world: World) -> None:
    suite = "AKMA1-P256-MLKEM768X25519-A256GCM"
    data = _seal(world.af2, world.network, suite=suite)
    policy = EnvelopePolicy(allowed_suites=frozenset({DEFAULT_SUITE_NAME}))
    with pytest.raises(errors.UnsupportedSuiteError):
        _open(data, world.network, world.trust, policy=policy)


def test_policy_refuses_unknown_suite_names() -> None:
    with pytest.raises(errors.UnsupportedSuiteError):
        EnvelopePolicy(allowed_suites=frozenset({"AKMA1-RSA-NOPE"}))


# ---- steps 3 and 4: recipient key and decryption


def test_envelope_for_someone_else_is_not_for_me(world: World) -> None:
    data = _seal(world.network, world.af2)
    with pytest.raises(errors.NotForMeError):
        _open(data, world.af1, world.trust)


@pytest.mark.parametrize("suite", BOTH_MODES)
def test_swapped_outer_suite_with_same_kem_fails_decryption(world: World, suite: str) -> None:
    # Relabelling a P-256 envelope as the Ed25519 suite (same key mode, so the same layout)
    # keeps the KEM (and so the key) but changes the HPKE info, so the AEAD refuses it.
    data = _seal(world.af2, world.network, suite=suite)
    fields = msgpack.unpackb(data)
    fields[1] = suite.replace("P256", "ED25519")
    with pytest.raises(errors.DecryptionFailedError):
        _open(msgpack.packb(fields), world.network, world.trust)


@pytest.mark.parametrize("suite", BOTH_MODES)
def test_outer_sender_relabelled_fails_decryption(world: World, suite: str) -> None:
    data = _seal(world.af2, world.network, suite=suite)
    fields = msgpack.unpackb(data)
    fields[2] = "af1.example.com"
    with pytest.raises(errors.DecryptionFailedError):
        _open(msgpack.packb(fields), world.network, world.trust)


@pytest.mark.parametrize("suite", BOTH_MODES)
def test_tampered_ciphertext_fails_decryption(world: World, suite: str) -> None:
    data = bytearray(_seal(world.af2, world.network, suite=suite))
    data[-1] ^= 1
    with pytest.raises(errors.DecryptionFailedError):
        _open(bytes(data), world.network, world.trust)


# ---- helpers for hand-made envelopes -----------------------------------------------------------


def _reencrypt(
    inner: bytes, *, outer_sender: str, to: Party, suite: str = DEFAULT_SUITE_NAME
) -> bytes:
    """Encrypt ``inner`` to ``to`` exactly as a sender would (anyone can encrypt to anyone)."""
    return encrypt_inner(
        inner,
        suite=SUITES[suite],
        sender=outer_sender,
        recipient=to.recipient_key(suite),
        rng=os.urandom,
        now_ms=NOW_MS,
    )


def _inner(
    sender: LocalIdentity, to: Party, *, at_ms: int = NOW_MS, suite: str = DEFAULT_SUITE_NAME
) -> bytes:
    inner, _, _ = build_signed_inner(
        suite=SUITES[suite],
        identity=sender,
        recipient=to.recipient_key(suite),
        msg_type="akma.test",
        body=b"secret",
        correlation_id=None,
        clock=fixed_clock(at_ms),
        rng=counter_rng(),
    )
    return inner


# ---- step 5: signature and signer


@pytest.mark.parametrize("suite", BOTH_MODES)
def test_surreptitious_forwarding_is_refused(world: World, suite: str) -> None:
    # af2 receives a message the network signed for af2, decrypts it (it holds the key) and
    # re-encrypts the signed inner message to af1, claiming the network sent it.
    original = _seal(world.network, world.af2, suite=suite)
    inner = decrypt_envelope(original, me=world.af2.identity, policy=POLICY)
    forwarded = _reencrypt(inner, outer_sender="network", to=world.af1, suite=suite)
    with pytest.raises(errors.IdentityMismatchError, match="another recipient"):
        _open(forwarded, world.af1, world.trust)


def test_forged_sender_with_own_valid_signature_is_refused(world: World) -> None:
    # af2 signs with its own (trusted) key but names the network as sender.
    forger = LocalIdentity("network", world.af2.sign_key, world.af2.identity.signing_kid)
    forged = _reencrypt(_inner(forger, world.af1), outer_sender="network", to=world.af1)
    with pytest.raises(errors.IdentityMismatchError, match="signing certificate"):
        _open(forged, world.af1, world.trust)


def test_forged_signer_kid_fails_signature(world: World) -> None:
    # af2 claims the network's signing key id but can only sign with its own key.
    forger = LocalIdentity("network", world.af2.sign_key, world.network.identity.signing_kid)
    forged = _reencrypt(_inner(forger, world.af1), outer_sender="network", to=world.af1)
    with pytest.raises(errors.BadSignatureError):
        _open(forged, world.af1, world.trust)


def test_outer_sender_must_match_signed_sender(world: World) -> None:
    # A correctly signed message from af2, wrapped with "network" as the outer sender.
    wrapped = _reencrypt(
        _inner(world.af2.identity, world.af1), outer_sender="network", to=world.af1
    )
    with pytest.raises(errors.IdentityMismatchError, match="outer sender"):
        _open(wrapped, world.af1, world.trust)


def test_signature_with_key_of_wrong_type_for_suite(world: World) -> None:
    # af1 signs with Ed25519; claiming the P-256 suite cannot make its key acceptable.
    with pytest.raises(errors.InvalidSealInputError):
        seal(
            identity=world.af1.identity,
            recipient=world.network.recipient_key(DEFAULT_SUITE_NAME),
            msg_type="t",
            body=b"",
            clock=fixed_clock(),
            rng=counter_rng(),
        )


def test_unknown_signer_is_untrusted(world: World) -> None:
    stranger = world.pki.party("stranger.example.com")
    data = _seal(stranger, world.network)
    with pytest.raises(errors.UntrustedSignerError) as info:
        _open(data, world.network, world.trust)
    assert info.value.code == "untrusted_signer"


def test_expired_and_not_yet_valid_signer(world: World) -> None:
    ca = world.pki
    old = ca.party("old.example.com", days=10)  # cert ends NOW + 10 days
    trust = ca.trust([world.network, old], crl_days=30)
    data = _seal(old, world.network, at_ms=NOW_MS + 11 * DAY_MS)
    with pytest.raises(errors.ExpiredSignerError):
        _open(data, world.network, trust, now_ms=NOW_MS + 11 * DAY_MS)
    data = _seal(old, world.network, at_ms=NOW_MS - 2 * DAY_MS)
    with pytest.raises(errors.UntrustedSignerError, match="not valid yet"):
        _open(data, world.network, trust, now_ms=NOW_MS - 2 * DAY_MS)


def test_revoked_signer(world: World) -> None:
    trust = world.pki.trust([world.network, world.af2], revoked=[world.af2.sign_cert.serial_number])
    with pytest.raises(errors.RevokedSignerError):
        _open(_seal(world.af2, world.network), world.network, trust)


@pytest.mark.parametrize("ca_name", ["Foreign CA", "Test CA"])
def test_foreign_ca_signer(world: World, ca_name: str) -> None:
    # "Test CA" is our CA's name: then only the chain's signature check can tell them apart.
    foreign = TestPki(ca_name)
    # Same name as a real party, certificate from another CA, included in the peer list.
    impostor = foreign.party("af2.example.com")
    trust = world.pki.trust([world.network], extra=impostor.certificates)
    with pytest.raises(errors.UntrustedSignerError):
        _open(_seal(impostor, world.network), world.network, trust)


# ---- step 6: identity bindings


def test_recipient_kid_must_match_decrypting_key(world: World) -> None:
    # Signed (under the PQ suite) naming af1's X25519 key id, then encrypted to af1's PQ key:
    # the right recipient, but not the key the sender signed for.
    pq = "AKMA1-P256-MLKEM768X25519-A256GCM"
    inner, _, _ = build_signed_inner(
        suite=SUITES[pq],
        identity=world.af2.identity,
        recipient=world.af1.recipient_key(DEFAULT_SUITE_NAME),
        msg_type="akma.test",
        body=b"x",
        correlation_id=None,
        clock=fixed_clock(),
        rng=counter_rng(),
    )
    moved = _reencrypt(inner, outer_sender=world.af2.name, to=world.af1, suite=pq)
    with pytest.raises(errors.IdentityMismatchError, match="encryption key"):
        _open(moved, world.af1, world.trust)


def test_broker_user_id_must_equal_sender(world: World) -> None:
    data = _seal(world.af2, world.network)
    with pytest.raises(errors.IdentityMismatchError, match="broker user id"):
        _open(data, world.network, world.trust, broker_user_id="af1.example.com")


def test_correlation_id_must_match(world: World) -> None:
    data = _seal(world.network, world.af2, correlation_id=b"a" * 16)
    assert _open(data, world.af2, world.trust, expected_correlation_id=b"a" * 16)
    with pytest.raises(errors.CorrelationMismatchError):
        _open(data, world.af2, world.trust, expected_correlation_id=b"b" * 16)
    plain = _seal(world.network, world.af2)
    with pytest.raises(errors.CorrelationMismatchError):
        _open(plain, world.af2, world.trust, expected_correlation_id=b"a" * 16)


# ---- step 7: time


def test_timestamp_window_edges(world: World) -> None:
    limit_old = POLICY.window_ms + POLICY.skew_ms
    data = _seal(world.af2, world.network, at_ms=NOW_MS - limit_old)
    assert _open(data, world.network, world.trust).timestamp_ms == NOW_MS - limit_old
    with pytest.raises(errors.StaleMessageError):
        _open(
            _seal(world.af2, world.network, at_ms=NOW_MS - limit_old - 1),
            world.network,
            world.trust,
        )
    data = _seal(world.af2, world.network, at_ms=NOW_MS + POLICY.skew_ms)
    assert _open(data, world.network, world.trust)
    with pytest.raises(errors.FromFutureError):
        _open(
            _seal(world.af2, world.network, at_ms=NOW_MS + POLICY.skew_ms + 1),
            world.network,
            world.trust,
        )
    assert POLICY.replay_retention_ms == POLICY.window_ms + 2 * POLICY.skew_ms


# ---- key rotation


def test_signing_key_rotation_with_overlap(world: World) -> None:
    ca = world.pki
    old_key, old_cert = ca.signing_cert("rot.example.com", days=30)
    new_key, new_cert = ca.signing_cert("rot.example.com", days=400)
    old = Party("rot.example.com", old_key, old_cert, [ca.enc_cert("rot.example.com")])
    new = Party("rot.example.com", new_key, new_cert, old.enc_keys)
    trust = ca.trust([world.network, old], extra=[new_cert], crl_days=60)
    overlap = NOW_MS + 20 * DAY_MS
    # During the overlap both the old and the new key are accepted.
    for party in (old, new):
        data = _seal(party, world.network, at_ms=overlap)
        assert _open(data, world.network, trust, now_ms=overlap).sender == "rot.example.com"
    # After the old certificate's notAfter only the new key works.
    after = NOW_MS + 31 * DAY_MS
    with pytest.raises(errors.ExpiredSignerError):
        _open(_seal(old, world.network, at_ms=after), world.network, trust, now_ms=after)
    assert _open(_seal(new, world.network, at_ms=after), world.network, trust, now_ms=after)
    # Removing the old certificate from the trust material refuses it at once.
    trimmed = ca.trust([world.network, new], crl_days=60)
    with pytest.raises(errors.UntrustedSignerError):
        _open(_seal(old, world.network, at_ms=overlap), world.network, trimmed, now_ms=overlap)


def test_encryption_key_rotation(world: World) -> None:
    ca = world.pki
    first = ca.enc_cert("rot2.example.com", days=100)
    second = ca.enc_cert(
        "rot2.example.com",
        not_before=ca.now,
        not_after=ca.now + (first[0].not_valid_after_utc - first[0].not_valid_before_utc) * 4,
    )
    me = Party("rot2.example.com", *ca.signing_cert("rot2.example.com"), [first, second])
    trust = ca.trust([world.network, me])
    suite = SUITES[DEFAULT_SUITE_NAME]
    chosen = trust.encryption_key_for("rot2.example.com", suite, NOW_MS)
    assert chosen.kid == kid_of(second[0])  # the newest certificate wins
    # A sender still using the old key: the recipient keeps both keys and opens it.
    old_key = me.recipient_key(DEFAULT_SUITE_NAME).__class__(
        "rot2.example.com", kid_of(first[0]), first[1].public_key()
    )
    data = seal(
        identity=world.network.identity,
        recipient=old_key,
        msg_type="t",
        body=b"x",
        clock=fixed_clock(),
        rng=counter_rng(),
    )
    assert _open(data, me, trust).body == b"x"


# ---- errors


def test_error_codes_are_distinct_and_rooted() -> None:
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type)
        and issubclass(c, BrokerAdapterError)
        and c.__module__ == errors.__name__
    ]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
    for name in [
        "malformed",
        "too_large",
        "unsupported_version",
        "unsupported_suite",
        "not_for_me",
        "decryption_failed",
        "bad_signature",
        "untrusted_signer",
        "revoked_signer",
        "expired_signer",
        "identity_mismatch",
        "correlation_mismatch",
        "stale",
        "from_future",
        "replay_conflict",
    ]:
        assert name in codes
    assert issubclass(errors.ReplayConflictError, errors.ReplayError)


def test_opening_failures_are_the_message_s_fault_and_a_bad_seal_input_is_ours() -> None:
    assert errors.EnvelopeError.fault is Fault.REMOTE
    assert errors.NoRecipientKeyError.fault is Fault.REMOTE
    assert errors.InvalidSealInputError.fault is Fault.LOCAL
    assert errors.TrustStoreError.fault is Fault.LOCAL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"msg_type": ""},
        {"msg_type": "x" * 65},
        {"msg_type": "caf\u00e9"},
        {"correlation_id": b"short"},
        {"body": "not bytes"},
    ],
)
def test_seal_refuses_bad_input(world: World, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "identity": world.af2.identity,
        "recipient": world.network.recipient_key(DEFAULT_SUITE_NAME),
        "msg_type": "t",
        "body": b"",
        "clock": fixed_clock(),
        "rng": counter_rng(),
    }
    args.update(kwargs)
    with pytest.raises(errors.InvalidSealInputError):
        seal(**args)


def test_seal_refuses_oversized_output(world: World) -> None:
    with pytest.raises(errors.EnvelopeTooLargeError):
        seal(
            identity=world.af2.identity,
            recipient=world.network.recipient_key(DEFAULT_SUITE_NAME),
            msg_type="t",
            body=b"x" * 1000,
            clock=fixed_clock(),
            rng=counter_rng(),
            max_envelope_bytes=500,
        )


def test_verified_signer_is_a_pair() -> None:
    assert VerifiedSigner._fields == ("identity", "public_key")
