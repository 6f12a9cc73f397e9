"""Hostile envelopes for the attack scenarios, each with the verdict the network must reach.

The attacker here is an insider with a valid broker certificate (af1, af2 or af3): it holds its
own message keys, the public keys anyone can read from the trust directory, signing keys from a
foreign CA, and a signing certificate of the real CA that the network has revoked or that has
expired. It can capture envelopes it saw (its own, or someone's from a leaked log) and replay
them. Everything is pure: the clock and the randomness are injected, nothing is published here.

Every generated message names the exact verdict the network must reach. The scenario compares
that expectation with the dead-letter queue, the metrics and the network's handler, so a check
that fires for the wrong reason is visible as a mismatch, not silently counted as a refusal.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack  # type: ignore[import-untyped]

from broker_adapter.envelope import (
    EnvelopePolicy,
    decrypt_envelope,
    encrypt_inner,
    seal_envelope,
)
from broker_adapter.epoch import SenderEpochs
from broker_adapter.identity import LocalIdentity, RecipientKey
from broker_adapter.suites import SUITES, Suite

__all__ = [
    "CATEGORIES",
    "AttackKit",
    "Attacker",
    "Captured",
    "Hostile",
    "Verdict",
    "VerdictKind",
]

KEY_REQUEST = "akma.af_key.request"
# Array headers of msgpack (fixarray, array16, array32): garbage never starts with one, so that
# it can only ever be "malformed" and never, by chance, an outer array with a wrong version.
_ARRAY_HEADERS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
# Envelope version 1 as msgpack writes it: a positive fixint, right after the array header.
_VERSION = 0x01


class VerdictKind(StrEnum):
    DEAD_LETTER = "dead_letter"  # refused: in akma.dead-letters with x-akma-reason = reason
    DUPLICATE = "duplicate"  # an exact replay of a processed message: acked, never reprocessed
    INVALID_BODY = "invalid_body"  # authentic but not a valid request: answered "invalid_request"


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    reason: str = ""  # the dead-letter reason code (``EnvelopeError.code``) for DEAD_LETTER

    @classmethod
    def dead(cls, reason: str) -> Verdict:
        return cls(VerdictKind.DEAD_LETTER, reason)


DUPLICATE = Verdict(VerdictKind.DUPLICATE)
INVALID_BODY = Verdict(VerdictKind.INVALID_BODY)


@dataclass(frozen=True)
class Hostile:
    """One hostile message and how it must end."""

    category: str
    data: bytes = field(repr=False)
    verdict: Verdict
    publisher: str  # the party whose broker connection publishes it (user_id = this party)
    with_user_id: bool = True
    msg_id: bytes | None = None  # the signed message id, when the message carries a real one


@dataclass(frozen=True)
class Captured:
    """An envelope the network has already processed, as an eavesdropper recorded it."""

    sender: str
    data: bytes = field(repr=False)
    msg_id: bytes
    timestamp_ms: int


@dataclass(frozen=True)
class AttackKit:
    """Key material and knowledge the attacker has.

    ``parties`` are the attacking AFs' own identities (with their decryption keys, which the
    forwarding attack needs); ``network`` and ``bystander`` are public encryption keys from the
    trust directory; ``foreign``, ``revoked`` and ``expired`` sign under an AF's name with keys
    the network must not trust.
    """

    parties: Mapping[str, LocalIdentity]
    network: RecipientKey
    bystander: RecipientKey  # another AF's encryption key: "sealed to the wrong recipient"
    foreign: LocalIdentity
    revoked: LocalIdentity
    expired: LocalIdentity
    suite: Suite
    policy: EnvelopePolicy  # the network's policy (size cap, window, skew, allowed suites)


def _valid_request_body(rng: random.Random) -> bytes:
    """A well-formed key request body: hostile tests must fail for the envelope, not the body."""
    af_id = b"af1.example.com" + bytes.fromhex("0100000007")
    a_kid = f"0.{rng.getrandbits(64):016x}@5gc.mnc001.mcc001.3gppnetwork.org"
    packed: bytes = msgpack.packb({"af_id": af_id, "a_kid": a_kid}, use_bin_type=True)
    return packed


def _unpack(data: bytes) -> list[Any]:
    value = msgpack.unpackb(data, raw=False)
    if not isinstance(value, list):
        raise TypeError(f"an envelope is a msgpack array, not {type(value).__name__}")
    return value


def _pack(value: list[Any]) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


class Attacker:
    """Makes hostile messages of each category in ``CATEGORIES``."""

    def __init__(
        self,
        kit: AttackKit,
        *,
        clock: Callable[[], int],
        rng: Callable[[int], bytes],
        seed: int = 0,
    ) -> None:
        self.kit = kit
        self._clock = clock
        self._rng = rng
        self._random = random.Random(seed)
        # One epoch state per signing identity, as a real sender would keep.
        self._epochs: dict[str, SenderEpochs] = {}

    # ---- building blocks ------------------------------------------------------------------

    def seal(
        self,
        identity: LocalIdentity,
        *,
        recipient: RecipientKey | None = None,
        msg_type: str = KEY_REQUEST,
        body: bytes | None = None,
        clock: Callable[[], int] | None = None,
        msg_id: bytes | None = None,
        max_bytes: int | None = None,
    ) -> tuple[bytes, bytes]:
        """Seal like a legitimate sender would; returns (envelope, msg_id)."""
        rng = self._rng
        if msg_id is not None:
            fixed = msg_id

            def rng(n: int) -> bytes:
                # The envelope draws the message id first and only then, for epoch suites, key
                # and nonce; a 16-byte draw is the id, anything else stays random.
                return fixed if n == len(fixed) else self._rng(n)

        sealed = seal_envelope(
            suite=self.kit.suite,
            identity=identity,
            recipient=recipient or self.kit.network,
            msg_type=msg_type,
            body=_valid_request_body(self._random) if body is None else body,
            clock=clock or self._clock,
            rng=rng,
            max_envelope_bytes=max_bytes or self.kit.policy.max_envelope_bytes,
            epochs=self._epochs.setdefault(identity.signing_kid.hex(), SenderEpochs()),
        )
        return sealed.data, sealed.msg_id

    def _fresh(self, publisher: str) -> tuple[bytes, bytes]:
        return self.seal(self.kit.parties[publisher])

    def _other(self, publisher: str) -> str:
        others = sorted(p for p in self.kit.parties if p != publisher)
        return self._random.choice(others)

    # ---- categories -----------------------------------------------------------------------

    def garbage(self, publisher: str) -> Hostile:
        size = self._random.randint(1, 2048)
        data = bytearray(self._rng(size))
        while data[0] in _ARRAY_HEADERS:
            data[0] = self._random.randrange(256)
        return Hostile("garbage", bytes(data), Verdict.dead("malformed"), publisher)

    def truncated(self, publisher: str) -> Hostile:
        data, msg_id = self._fresh(publisher)
        cut = self._random.randrange(0, len(data))
        return Hostile("truncated", data[:cut], Verdict.dead("malformed"), publisher, msg_id=msg_id)

    def oversized(self, publisher: str) -> Hostile:
        # A real, validly signed envelope whose only fault is its size: the cap must come first.
        cap = self.kit.policy.max_envelope_bytes
        body = self._rng(cap + self._random.randint(1, 4096))
        data, msg_id = self.seal(self.kit.parties[publisher], body=body, max_bytes=4 * cap)
        return Hostile("oversized", data, Verdict.dead("too_large"), publisher, msg_id=msg_id)

    def tampered_ciphertext(self, publisher: str) -> Hostile:
        data, msg_id = self._fresh(publisher)
        ciphertext_len = len(_unpack(data)[-1])
        # The ciphertext is the last field, so its bytes are the last bytes of the encoding.
        position = len(data) - 1 - self._random.randrange(ciphertext_len)
        flipped = bytearray(data)
        flipped[position] ^= 1 << self._random.randrange(8)
        return Hostile(
            "tampered_ciphertext", bytes(flipped), Verdict.dead("decryption_failed"), publisher,
            msg_id=msg_id,
        )

    def tampered_recipient_kid(self, publisher: str) -> Hostile:
        data, msg_id = self._fresh(publisher)
        fields = _unpack(data)
        kid = bytearray(fields[3])
        kid[self._random.randrange(len(kid))] ^= 1 << self._random.randrange(8)
        fields[3] = bytes(kid)
        return Hostile(
            "tampered_recipient_kid", _pack(fields), Verdict.dead("not_for_me"), publisher,
            msg_id=msg_id,
        )

    def tampered_sender(self, publisher: str) -> Hostile:
        # Relabel the outer sender: the HPKE context binds it, so decryption must fail.
        data, msg_id = self._fresh(publisher)
        fields = _unpack(data)
        fields[2] = self._other(publisher)
        return Hostile(
            "tampered_sender", _pack(fields), Verdict.dead("decryption_failed"), publisher,
            msg_id=msg_id,
        )

    def tampered_version(self, publisher: str) -> Hostile:
        data, msg_id = self._fresh(publisher)
        fields = _unpack(data)
        fields[0] = self._random.choice([0, 2, 3, 127, 2**16])
        return Hostile(
            "tampered_version", _pack(fields), Verdict.dead("unsupported_version"), publisher,
            msg_id=msg_id,
        )

    def non_canonical(self, publisher: str) -> Hostile:
        # The same values, but the version as a uint8 (0xcc 0x01) instead of a fixint: one
        # message must have one encoding, so this is refused although it decodes the same.
        data, msg_id = self._fresh(publisher)
        if data[1] != _VERSION:
            raise ValueError(f"expected the version fixint at byte 1, found {data[1]:#04x}")
        return Hostile(
            "non_canonical", data[:1] + b"\xcc" + data[1:], Verdict.dead("malformed"), publisher,
            msg_id=msg_id,
        )

    def wrong_suite(self, publisher: str) -> Hostile:
        data, msg_id = self._fresh(publisher)
        fields = _unpack(data)
        refused = sorted(set(SUITES) - self.kit.policy.allowed_suites)
        fields[1] = self._random.choice([*refused, "AKMA1-NULL-NULL-NULL", "none", ""])
        return Hostile(
            "wrong_suite", _pack(fields), Verdict.dead("unsupported_suite"), publisher,
            msg_id=msg_id,
        )

    def wrong_recipient(self, publisher: str) -> Hostile:
        data, msg_id = self.seal(self.kit.parties[publisher], recipient=self.kit.bystander)
        return Hostile(
            "wrong_recipient", data, Verdict.dead("not_for_me"), publisher, msg_id=msg_id
        )

    def forwarded(self, publisher: str) -> Hostile:
        """Surreptitious forwarding: ``publisher`` received a message signed for it by another
        AF, decrypted it, and re-encrypts the signed inner message to the network."""
        signer = self._other(publisher)
        me = self.kit.parties[publisher]
        my_key = RecipientKey(me.name, *self._own_encryption_key(me))
        sealed, msg_id = self.seal(self.kit.parties[signer], recipient=my_key)
        inner = decrypt_envelope(sealed, me=me, policy=self.kit.policy)
        data = encrypt_inner(
            inner,
            suite=self.kit.suite,
            sender=publisher,
            recipient=self.kit.network,
            rng=self._rng,
            now_ms=self._clock(),
        )
        return Hostile(
            "forwarded", data, Verdict.dead("identity_mismatch"), publisher, msg_id=msg_id
        )

    def _own_encryption_key(self, me: LocalIdentity) -> tuple[bytes, Any]:
        for kid, key in me.decryption_keys.items():
            if self.kit.suite.accepts_kem_key(key):
                return kid, key.public_key()
        raise LookupError(f"{me.name} has no key for {self.kit.suite.name}")

    def stale(self, publisher: str) -> Hostile:
        policy = self.kit.policy
        age = policy.window_ms + policy.skew_ms + self._random.randint(60_000, 3_600_000)
        data, msg_id = self.seal(
            self.kit.parties[publisher], clock=lambda: self._clock() - age
        )
        return Hostile("stale", data, Verdict.dead("stale"), publisher, msg_id=msg_id)

    def from_future(self, publisher: str) -> Hostile:
        ahead = self.kit.policy.skew_ms + self._random.randint(60_000, 3_600_000)
        data, msg_id = self.seal(
            self.kit.parties[publisher], clock=lambda: self._clock() + ahead
        )
        return Hostile("from_future", data, Verdict.dead("from_future"), publisher, msg_id=msg_id)

    def unknown_signer(self, publisher: str) -> Hostile:
        # The foreign key signs under an AF's own name; the broker user is that same AF.
        data, msg_id = self.seal(self.kit.foreign)
        return Hostile(
            "unknown_signer", data, Verdict.dead("untrusted_signer"), self.kit.foreign.name,
            msg_id=msg_id,
        )

    def revoked_signer(self, publisher: str) -> Hostile:
        data, msg_id = self.seal(self.kit.revoked)
        return Hostile(
            "revoked_signer", data, Verdict.dead("revoked_signer"), self.kit.revoked.name,
            msg_id=msg_id,
        )

    def expired_signer(self, publisher: str) -> Hostile:
        data, msg_id = self.seal(self.kit.expired)
        return Hostile(
            "expired_signer", data, Verdict.dead("expired_signer"), self.kit.expired.name,
            msg_id=msg_id,
        )

    def missing_user_id(self, publisher: str) -> Hostile:
        data, msg_id = self._fresh(publisher)
        return Hostile(
            "missing_user_id", data, Verdict.dead("missing_user_id"), publisher,
            with_user_id=False, msg_id=msg_id,
        )

    def invalid_body(self, publisher: str) -> Hostile:
        choice = self._random.randrange(3)
        if choice == 0:
            body = self._rng(self._random.randint(0, 256))
        elif choice == 1:
            body = _pack(["not", "a", "map"])
        else:
            packed: bytes = msgpack.packb(
                {"af_id": "text, not bytes", "evil": 1}, use_bin_type=True
            )
            body = packed
        data, msg_id = self.seal(self.kit.parties[publisher], body=body)
        return Hostile("invalid_body", data, INVALID_BODY, publisher, msg_id=msg_id)

    def unknown_type(self, publisher: str) -> Hostile:
        data, msg_id = self.seal(self.kit.parties[publisher], msg_type="akma.admin.shutdown")
        return Hostile("unknown_type", data, INVALID_BODY, publisher, msg_id=msg_id)

    # ---- categories built on a captured envelope ------------------------------------------

    def replay(self, captured: Captured) -> Hostile:
        """The exact bytes again, from the original sender: a harmless duplicate."""
        return Hostile(
            "replay", captured.data, DUPLICATE, captured.sender, msg_id=captured.msg_id
        )

    def replay_other_sender(self, captured: Captured) -> Hostile:
        """The exact bytes, published by another AF: the broker's user_id betrays it."""
        return Hostile(
            "replay_other_sender", captured.data, Verdict.dead("identity_mismatch"),
            self._other(captured.sender), msg_id=captured.msg_id,
        )

    def same_id_other_bytes(self, captured: Captured) -> Hostile:
        """A new message under an id the network already processed: forgery or a producer bug."""
        data, msg_id = self.seal(self.kit.parties[captured.sender], msg_id=captured.msg_id)
        if msg_id != captured.msg_id or data == captured.data:
            raise ValueError("expected new bytes under the captured message id")
        return Hostile(
            "same_id_other_bytes", data, Verdict.dead("replay_conflict"), captured.sender,
            msg_id=msg_id,
        )

    # ---- a mixed batch ----------------------------------------------------------------------

    def batch(self, count: int, captured: Sequence[Captured]) -> list[Hostile]:
        """``count`` messages, categories drawn by weight, publishers drawn among the AFs."""
        names = [name for name, _ in CATEGORIES]
        weights = [weight for _, weight in CATEGORIES]
        publishers = sorted(self.kit.parties)
        out: list[Hostile] = []
        for drawn in self._random.choices(names, weights, k=count):
            name = drawn
            if drawn in _CAPTURE_BASED:
                if not captured:
                    name = "garbage"
                else:
                    out.append(getattr(self, drawn)(self._random.choice(captured)))
                    continue
            out.append(getattr(self, name)(self._random.choice(publishers)))
        return out


# Category name -> relative weight. Oversized messages are rarer only to keep the dead-letter
# queue small; every category still appears hundreds of times in a full run.
CATEGORIES: tuple[tuple[str, float], ...] = (
    ("garbage", 1.0),
    ("truncated", 1.0),
    ("oversized", 0.25),
    ("tampered_ciphertext", 1.0),
    ("tampered_recipient_kid", 0.5),
    ("tampered_sender", 0.5),
    ("tampered_version", 0.5),
    ("non_canonical", 0.5),
    ("wrong_suite", 1.0),
    ("wrong_recipient", 1.0),
    ("forwarded", 0.5),
    ("stale", 1.0),
    ("from_future", 1.0),
    ("unknown_signer", 1.0),
    ("revoked_signer", 1.0),
    ("expired_signer", 0.5),
    ("missing_user_id", 1.0),
    ("invalid_body", 0.5),
    ("unknown_type", 0.25),
    ("replay", 1.0),
    ("replay_other_sender", 0.5),
    ("same_id_other_bytes", 1.0),
)
_CAPTURE_BASED = frozenset({"replay", "replay_other_sender", "same_id_other_bytes"})
