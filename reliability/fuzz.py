"""Mutation fuzzing of the envelope decoder and the message models.

The contract under test is h11's: any input either decodes or raises the component's own error
class, nothing else. For the envelope decoder (``EnvelopeCodec.decode`` over ``open_envelope``)
that is ``EnvelopeError``; for the message models (``akma_contract.messages.decode_body``) it is
``ContractError``. Anything else escaping is a bug, and so is a mutated envelope that opens
(a forgery).

The seed corpus is real: envelopes sealed by the codec in every suite of the registry
(per-message and epoch, classical and hybrid KEM, P-256 and Ed25519 signers) and the body of
every message type of the contract. A custom mutator works at three depths so that the checks
behind the decryption are reached too:

- ``outer``: the envelope bytes as the broker carries them (bit flips, byte changes,
  truncations, insertions, deletions, splices with another seed, and msgpack-aware edits of the
  outer array). Nothing changed may open.
- ``inner``: the decrypted, signed inner message is mutated the same ways and encrypted again
  to the receiver, so parsing and signature checks run on hostile plaintext. Nothing changed
  may open: the signature no longer covers it.
- ``resigned``: inner fields are edited and then signed again with the sender's real key, so
  the identity, correlation and timestamp checks run on hostile values. These may open (the
  sender really did sign them); only the error contract applies.

No I/O: the PKI is built in memory with ``infra.pki``'s certificate functions, the clock is fixed.
"""

from __future__ import annotations

import functools
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519

from akma_contract.errors import ContractError
from akma_contract.identifiers import UA_TLS13_SHARED_KEY, make_af_id
from akma_contract.messages import (
    MESSAGE_TYPES,
    AkmaAfKeyData,
    AkmaAfKeyRequest,
    AkmaKeyInfo,
    AkmaMessage,
    AnchorKeyRegistered,
    ContextRemovedNotification,
    ContextRemoveDone,
    CtxRemove,
    KeyNotFound,
    Rejected,
    decode_body,
)
from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope import (
    EnvelopePolicy,
    decrypt_envelope,
    encrypt_inner,
    seal_envelope,
    signed_bytes,
)
from broker_adapter.envelope_errors import EnvelopeError
from broker_adapter.epoch import SenderEpochs
from broker_adapter.identity import LocalIdentity, RecipientKey
from broker_adapter.suites import SUITES, KemPrivateKey, SignatureAlgorithm, Suite
from broker_adapter.trust import TrustMaterial, TrustStore
from infra import pki

__all__ = [
    "FuzzReport",
    "FuzzWorld",
    "Mutator",
    "fuzz_envelopes",
    "fuzz_models",
    "model_seeds",
    "run_target",
]

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
_MAX_ESCAPES_KEPT = 20


# ---- the mutator -----------------------------------------------------------------------------

# Bytes that mean something to msgpack (type headers) or sit on boundaries.
_INTERESTING_BYTES = (
    0x00, 0x01, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5,
    0xC6, 0xC7, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD3, 0xD4, 0xD8, 0xD9, 0xDA, 0xDB,
    0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0xFF,
)
_INTERESTING_INTS = (
    0, 1, -1, 2, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**53, 2**63 - 1,
    2**63, 2**64 - 1, -(2**31), -(2**63), NOW_MS, NOW_MS - 400_000, NOW_MS + 40_000,
)
_INTERESTING_LENGTHS = (0, 1, 5, 6, 12, 15, 16, 17, 31, 32, 33, 63, 64, 65, 254, 255, 256, 1025)
_INTERESTING_STRINGS = (
    "", "network", "af1.example.com", "af2.example.com", "AF1.EXAMPLE.COM", "a" * 254,
    "akma.af_key.request", "akma.rejected", "\u00e9t\u00e9", "\x00", "x" * 65, "..", "-bad-",
    "AKMA1-P256-X25519-A256GCM", "AKMA1-P256-X25519-A256GCM-E", "imsi-001010000000001",
    "msisdn-15550001", "0.deadbeef@realm", "rate_limited", "unauthorized", "\ud7ff",
)


# Containers nest this deep at most; below it only leaves are drawn.
_MAX_NESTING = 2
# Of the extension values, this share are msgpack timestamps.
_TIMESTAMP_SHARE = 0.2
# A non-empty list or map is edited inside with this probability, else tweaked as a whole.
_EDIT_INSIDE_SHARE = 0.8
# The third near miss of a bytes value (extend) and of a str value (truncate).
_EXTEND = _TRUNCATE = 2
# Re-packed with msgpack's bin type, else with raw strings (the old spec) for the rest.
_BIN_TYPE_SHARE = 0.9
# Mutations that edit the decoded structure; of those, the share not followed by byte edits.
_STRUCTURED_SHARE = 0.35
_STRUCTURED_ONLY_SHARE = 0.8
# The inner message's signed fields, before the signature.
_SIGNED_FIELDS = 10
# Model fuzzing: rolls below these send a body under another valid type, then an odd type.
_OTHER_TYPE_BELOW = 0.1
_ODD_TYPE_BELOW = 0.15
# Bodies mutated from a seed (the rest random bytes), and bodies blown past the size cap.
_MUTATED_BODY_SHARE = 0.95
_OVERSIZED_SHARE = 0.002


class Mutator:
    """Byte-level and msgpack-aware mutations drawn from a seeded ``random.Random``."""

    def __init__(self, rng: random.Random, corpus: Sequence[bytes]) -> None:
        self.rng = rng
        self.corpus = list(corpus)

    # -- byte level

    def bytes_(self, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.rng.choice((1, 1, 1, 2, 3, 4))):
            out = self._one_byte_op(out)
        return bytes(out)

    def _one_byte_op(self, buf: bytearray) -> bytearray:
        rng = self.rng
        ops = self._byte_ops
        # One draw past the table: prepend random bytes (also the only edit of an empty buffer).
        op = rng.randrange(len(ops) + 1)
        if not buf or op == len(ops):
            return bytearray(rng.randbytes(rng.randrange(1, 64))) + buf
        return ops[op](buf)

    @property
    def _byte_ops(self) -> tuple[Callable[[bytearray], bytearray], ...]:
        return (self._flip_bit, self._random_byte, self._interesting_byte, self._truncate,
                self._insert_chunk, self._delete_chunk, self._duplicate_chunk, self._splice,
                self._append)

    def _flip_bit(self, buf: bytearray) -> bytearray:
        buf[self.rng.randrange(len(buf))] ^= 1 << self.rng.randrange(8)
        return buf

    def _random_byte(self, buf: bytearray) -> bytearray:
        buf[self.rng.randrange(len(buf))] = self.rng.randrange(256)
        return buf

    def _interesting_byte(self, buf: bytearray) -> bytearray:
        buf[self.rng.randrange(len(buf))] = self.rng.choice(_INTERESTING_BYTES)
        return buf

    def _truncate(self, buf: bytearray) -> bytearray:
        del buf[self.rng.randrange(len(buf)) :]
        return buf

    def _insert_chunk(self, buf: bytearray) -> bytearray:
        at = self.rng.randrange(len(buf) + 1)
        buf[at:at] = self.rng.randbytes(self.rng.choice((1, 1, 2, 4, 16, 64)))
        return buf

    def _delete_chunk(self, buf: bytearray) -> bytearray:
        at = self.rng.randrange(len(buf))
        del buf[at : at + self.rng.choice((1, 1, 2, 4, 16))]
        return buf

    def _duplicate_chunk(self, buf: bytearray) -> bytearray:
        """A chunk repeated in place."""
        at = self.rng.randrange(len(buf))
        chunk = buf[at : at + self.rng.choice((1, 2, 8, 32))]
        buf[at:at] = chunk
        return buf

    def _splice(self, buf: bytearray) -> bytearray:
        """Our head, another seed's tail."""
        rng = self.rng
        other = rng.choice(self.corpus) if self.corpus else bytes(buf)
        cut = rng.randrange(len(buf) + 1)
        return buf[:cut] + other[rng.randrange(len(other) + 1) :]

    def _append(self, buf: bytearray) -> bytearray:
        """Trailing bytes."""
        buf += self.rng.randbytes(self.rng.choice((1, 1, 2, 8)))
        return buf

    # -- msgpack aware

    def value(self, depth: int = 0) -> Any:
        """A random msgpack value, biased towards boundary cases of our formats."""
        kinds = self._leaf_kinds
        if depth < _MAX_NESTING:
            kinds += self._container_kinds
        return kinds[self.rng.randrange(len(kinds))](depth)

    @property
    def _leaf_kinds(self) -> tuple[Callable[[int], Any], ...]:
        rng = self.rng
        return (
            lambda _: rng.choice(_INTERESTING_INTS),
            lambda _: rng.choice(_INTERESTING_STRINGS),
            lambda _: rng.randbytes(rng.choice(_INTERESTING_LENGTHS)),
            lambda _: rng.choice((None, True, False)),
            lambda _: rng.choice((0.0, -1.5, 1e308, float("nan"))),
            self._extension,
            lambda _: rng.randrange(-(2**63), 2**64),
        )

    @property
    def _container_kinds(self) -> tuple[Callable[[int], Any], ...]:
        rng = self.rng
        return (
            lambda depth: [self.value(depth + 1) for _ in range(rng.randrange(0, 4))],
            lambda depth: {rng.choice(_INTERESTING_STRINGS): self.value(depth + 1)
                           for _ in range(rng.randrange(0, 3))},
            # One element repeated: the shape of a length-prefixed array of equal items.
            lambda depth: [self.value(depth + 1)] * rng.randrange(12, 18),
        )

    def _extension(self, _depth: int) -> Any:
        rng = self.rng
        if rng.random() < _TIMESTAMP_SHARE:
            return msgpack.Timestamp(rng.randrange(2**34), rng.randrange(10**9))
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(0, 9)))

    def edit(self, obj: Any) -> Any:
        """One edit somewhere in a decoded msgpack value (lists and maps are copied)."""
        rng = self.rng
        if isinstance(obj, list) and obj and rng.random() < _EDIT_INSIDE_SHARE:
            return self._edit_list(obj)
        if isinstance(obj, dict) and obj and rng.random() < _EDIT_INSIDE_SHARE:
            return self._edit_map(obj)
        return self._tweak(obj)

    def _edit_list(self, obj: list[Any]) -> list[Any]:
        rng = self.rng
        out = list(obj)
        i = rng.randrange(len(out))

        def swap() -> None:
            j = rng.randrange(len(out))
            out[i], out[j] = out[j], out[i]

        edits: tuple[Callable[[], None], ...] = (
            lambda: out.__setitem__(i, self.value()),
            lambda: out.__setitem__(i, self.edit(out[i])),
            lambda: out.__delitem__(i),
            lambda: out.insert(i, self.value()),
            swap,
            lambda: out.__setitem__(i, self._tweak(out[i])),
        )
        edits[rng.randrange(len(edits))]()
        return out

    def _edit_map(self, obj: dict[Any, Any]) -> dict[Any, Any]:
        rng = self.rng
        out = dict(obj)
        key = rng.choice(list(out))

        def new_key() -> None:
            value = self.value()  # drawn before the key, so a seed reproduces the same cases
            out[rng.choice(_INTERESTING_STRINGS)] = value

        def odd_key() -> None:
            # A key of another type: msgpack allows any, our decoders must refuse them.
            new_key = rng.choice((7, -1, b"af_id", None, True, 1.5, (1, 2), "AF_ID"))
            out[new_key] = out.pop(key)

        edits: tuple[Callable[[], None], ...] = (
            lambda: out.__setitem__(key, self.value()),
            lambda: out.__setitem__(key, self._tweak(out[key])),
            lambda: out.__delitem__(key),
            new_key,
            odd_key,
        )
        edits[rng.randrange(len(edits))]()
        return out

    def _tweak(self, value: Any) -> Any:
        """A near miss of ``value``: same type where possible, just outside what is valid."""
        rng = self.rng
        if type(value) is bytes:
            return self._tweak_bytes(value)
        if type(value) is str:
            return self._tweak_str(value)
        if type(value) is int:
            return rng.choice(
                (value + 1, value - 1, -value, value * 2**32, str(value), float(value))
            )
        if type(value) is bool:
            return int(value)
        if value is None:
            return rng.choice((b"", 0, False, [], {}))
        return self.value()

    def _tweak_bytes(self, value: bytes) -> bytes | str:
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0 and value:
            b = bytearray(value)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            return bytes(b)
        if choice == 1:
            return value[: rng.randrange(len(value) + 1)]
        if choice == _EXTEND:
            return value + rng.randbytes(rng.randrange(1, 4))
        return value.decode("latin-1")  # the same octets as a str

    def _tweak_str(self, value: str) -> str | bytes:
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:
            return value.upper()
        if choice == 1:
            return value + rng.choice(("x", ".", "\x00", "\u00e9", " "))
        if choice == _TRUNCATE:
            return value[: rng.randrange(len(value) + 1)]
        return value.encode()  # the same text as bytes

    def structured(self, data: bytes) -> bytes | None:
        """Decode, edit, re-encode; None if ``data`` does not decode or the edit cannot pack."""
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 - not msgpack: the caller falls back to bytes
            return None
        for _ in range(self.rng.choice((1, 1, 2))):
            obj = self.edit(obj)
        try:
            packed: bytes = msgpack.packb(
                obj, use_bin_type=self.rng.random() < _BIN_TYPE_SHARE, strict_types=False
            )
        except Exception:  # noqa: BLE001 - e.g. an int out of range after an edit
            return None
        return packed

    def mutate(self, data: bytes) -> bytes:
        if self.rng.random() < _STRUCTURED_SHARE:
            structured = self.structured(data)
            if structured is not None:
                if self.rng.random() < _STRUCTURED_ONLY_SHARE:
                    return structured
                return self.bytes_(structured)
        return self.bytes_(data)


# ---- running a target ------------------------------------------------------------------------


@dataclass
class FuzzReport:
    target: str
    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)  # error code, or "accepted"
    by_layer: Counter[str] = field(default_factory=Counter)
    escapes: list[tuple[str, str]] = field(default_factory=list)  # (input hex, exception)
    escape_count: int = 0
    forgeries: int = 0

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "seconds": round(self.seconds, 2),
            "inputs_per_second": round(self.rate),
            "outcomes": dict(self.outcomes.most_common()),
            "by_layer": dict(self.by_layer),
            "escapes": self.escape_count,
            "escape_examples": self.escapes[:5],
            "forgeries": self.forgeries,
        }


def run_target(
    report: FuzzReport,
    call: Callable[[], object],
    allowed: type[BaseException],
    sample: bytes,
) -> object | None:
    """Run one input; record its outcome. Returns the decoded value when it was accepted."""
    report.inputs += 1
    try:
        value = call()
    except allowed as exc:
        report.outcomes[getattr(exc, "code", type(exc).__name__)] += 1
        return None
    except Exception as exc:  # noqa: BLE001 - exactly what the fuzzer is looking for
        report.escape_count += 1
        report.outcomes[f"ESCAPED {type(exc).__name__}"] += 1
        if len(report.escapes) < _MAX_ESCAPES_KEPT:
            report.escapes.append((sample[:512].hex(), repr(exc)[:300]))
        return None
    report.outcomes["accepted"] += 1
    return value


# ---- envelope world: an in-memory deployment ------------------------------------------------


@dataclass(frozen=True)
class Seed:
    envelope: bytes
    inner: bytes  # the decrypted, signed inner message
    sender: LocalIdentity
    suite: Suite


@dataclass
class FuzzWorld:
    """A CA, a receiver (``network``) and two senders, one per signature algorithm."""

    codec: EnvelopeCodec
    me: LocalIdentity
    recipient_keys: dict[str, RecipientKey]  # suite name -> the receiver's public key
    seeds: list[Seed]

    @classmethod
    def create(cls, seeds_per_suite: int = 3) -> FuzzWorld:
        ca_cert, ca_key = pki.create_ca("Fuzz CA", now=NOW - timedelta(days=365))

        def issue(name: str, purpose: pki.Purpose, public_key: Any, **kw: Any) -> Any:
            return pki.issue_cert(
                ca_cert, ca_key, identity=name, purpose=purpose, public_key=public_key, now=NOW,
                **kw,
            )

        def party(name: str, alg: str) -> tuple[LocalIdentity, list[Any]]:
            sign_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey = (
                ec.generate_private_key(ec.SECP256R1()) if alg == "p256"
                else ed25519.Ed25519PrivateKey.generate()
            )
            sign_cert = issue(name, "sign", sign_key.public_key())
            x_key = x25519.X25519PrivateKey.generate()
            m_key = mlkem.MLKEM768PrivateKey.generate()
            x2 = x25519.X25519PrivateKey.generate()
            enc = issue(name, "enc", x_key.public_key())
            enc_pq = issue(
                name, "enc-pq", x2.public_key(),
                mlkem_public_bytes=m_key.public_key().public_bytes_raw(),
            )
            keys: list[tuple[Any, KemPrivateKey]] = [
                (enc, x_key), (enc_pq, hpke.MLKEM768X25519PrivateKey(m_key, x2)),
            ]
            identity = LocalIdentity.from_certificates(
                name, signing_key=sign_key, signing_cert=sign_cert, decryption_keys=keys
            )
            return identity, [sign_cert, enc, enc_pq]

        me, me_certs = party("network", "p256")
        af1, af1_certs = party("af1.example.com", "p256")
        af2, af2_certs = party("af2.example.com", "ed25519")
        trust = TrustStore.from_material(
            TrustMaterial(
                anchors=(ca_cert,),
                crls=(pki.build_crl(ca_cert, ca_key, [], now=NOW),),
                certificates=tuple(me_certs + af1_certs + af2_certs),
            )
        )
        policy = EnvelopePolicy(allowed_suites=frozenset(SUITES), max_envelope_bytes=64 * 1024)
        codec = EnvelopeCodec(
            identity=me, trust=trust, policy=policy, clock=lambda: NOW_MS,
            rng=random.Random(0).randbytes,
        )
        recipient_keys = {
            name: trust.encryption_key_for("network", suite, NOW_MS)
            for name, suite in SUITES.items()
        }
        rng = random.Random(1)
        seeds: list[Seed] = []
        bodies = model_seeds()
        for name, suite in sorted(SUITES.items()):
            sender = af2 if suite.signature is SignatureAlgorithm.ED25519 else af1
            epochs = SenderEpochs()  # several messages of one epoch, as a real sender sends
            for i in range(seeds_per_suite):
                msg_type, body = bodies[(i + len(seeds)) % len(bodies)]
                sealed = seal_envelope(
                    suite=suite, identity=sender, recipient=recipient_keys[name],
                    msg_type=msg_type, body=body,
                    correlation_id=rng.randbytes(16) if i % 2 else None,
                    clock=lambda: NOW_MS - 1000, rng=rng.randbytes, epochs=epochs,
                )
                inner = decrypt_envelope(sealed.data, me=me, policy=policy)
                seeds.append(Seed(sealed.data, inner, sender, suite))
        return cls(codec, me, recipient_keys, seeds)

    def decode(self, data: bytes, user_id: str | None) -> object:
        return self.codec.decode(data, broker_user_id=user_id)

    def reencrypt(self, seed: Seed, inner: bytes, rng: random.Random) -> bytes:
        """Encrypt ``inner`` to the receiver like ``seed`` was, whatever ``inner`` holds."""
        return encrypt_inner(
            inner, suite=seed.suite, sender=seed.sender.name,
            recipient=self.recipient_keys[seed.suite.name], rng=rng.randbytes, now_ms=NOW_MS,
        )

    def resign(self, seed: Seed, fields: list[Any]) -> bytes | None:
        """Sign the signed fields with the seed's real sender key; None if they cannot be packed."""
        signed = fields[:_SIGNED_FIELDS]
        try:
            signature = seed.suite.sign(
                seed.sender.signing_key, signed_bytes(seed.suite.name, signed)
            )
            packed: bytes = msgpack.packb([*signed, signature], use_bin_type=True)
        except Exception:  # noqa: BLE001 - an edit made the fields unpackable
            return None
        return packed


def fuzz_envelopes(world: FuzzWorld, count: int, *, seed: int = 0) -> FuzzReport:
    """``count`` mutated envelopes through ``EnvelopeCodec.decode``; see the module docstring."""
    rng = random.Random(seed)
    mutator = Mutator(rng, [s.envelope for s in world.seeds])
    inner_mutator = Mutator(rng, [s.inner for s in world.seeds])
    originals = {s.envelope for s in world.seeds}
    report = FuzzReport("envelope")
    started = time.perf_counter()
    while report.inputs < count:
        seed_ = rng.choice(world.seeds)
        layer = rng.choices(("outer", "inner", "resigned"), (6, 3, 1))[0]
        if layer == "outer":
            data = mutator.mutate(seed_.envelope)
            if data in originals:
                continue
        elif layer == "inner":
            inner = inner_mutator.mutate(seed_.inner)
            if inner == seed_.inner:
                continue
            data = world.reencrypt(seed_, inner, rng)
        else:
            fields = msgpack.unpackb(seed_.inner, raw=False)
            for _ in range(rng.choice((1, 1, 2))):
                fields = inner_mutator.edit(fields)
            if not isinstance(fields, list) or len(fields) < _SIGNED_FIELDS:
                continue
            resigned = world.resign(seed_, fields)
            if resigned is None:
                continue
            data = world.reencrypt(seed_, resigned, rng)
        report.by_layer[layer] += 1
        user_id = rng.choice((None, seed_.sender.name, seed_.sender.name, "af9.example.com"))
        accepted = run_target(
            report, functools.partial(world.decode, data, user_id), EnvelopeError, data
        )
        if accepted is not None and layer != "resigned":
            # Outer and inner mutants carry no valid signature over what changed.
            report.forgeries += 1
    report.seconds = time.perf_counter() - started
    return report


# ---- message models ----------------------------------------------------------------------------


def model_seeds() -> list[tuple[str, bytes]]:
    """One real body (or more) of every message type of the contract."""
    a_kid = "0.0123456789abcdef0123456789abcdef@5gc.mnc001.mcc001.3gppnetwork.org"
    af_id = make_af_id("af1.example.com", UA_TLS13_SHARED_KEY)
    messages: list[AkmaMessage] = [
        AkmaAfKeyRequest(af_id=af_id, a_kid=a_kid),
        AkmaAfKeyRequest(af_id=af_id, a_kid=a_kid, anon_ind=True),
        AkmaKeyInfo(supi="imsi-001010000000001", gpsi="msisdn-15550001", a_kid=a_kid,
                    k_akma=bytes(range(32))),
        AkmaKeyInfo(supi="nai-user@example.org", a_kid=a_kid, k_akma=bytes(32)),
        AnchorKeyRegistered(a_kid=a_kid),
        AkmaAfKeyData(k_af=bytes(range(32)), expiry_ms=NOW_MS, supi="imsi-001010000000001"),
        AkmaAfKeyData(k_af=bytes(32), expiry_ms=0, gpsi="extid-user@example.org"),
        KeyNotFound(),
        Rejected(reason="rate_limited"),
        CtxRemove(supi="imsi-001010000000001"),
        ContextRemoveDone(),
        ContextRemovedNotification(a_kid=a_kid, reason="removed"),
    ]
    covered = {m.MSG_TYPE for m in messages}
    if covered != set(MESSAGE_TYPES):
        raise RuntimeError(f"seed corpus misses {set(MESSAGE_TYPES) - covered}")
    return [(m.MSG_TYPE, m.to_body()) for m in messages]


def fuzz_models(count: int, *, seed: int = 0) -> FuzzReport:
    """``count`` mutated bodies (and sometimes message types) through ``decode_body``."""
    rng = random.Random(seed)
    seeds = model_seeds()
    mutator = Mutator(rng, [body for _, body in seeds])
    types: list[Any] = list(MESSAGE_TYPES)
    report = FuzzReport("models")
    started = time.perf_counter()
    while report.inputs < count:
        msg_type, body = rng.choice(seeds)
        roll = rng.random()
        kind: Any = msg_type
        if roll < _OTHER_TYPE_BELOW:
            kind = rng.choice(types)  # a valid body under another type
        elif roll < _ODD_TYPE_BELOW:
            kind = rng.choice((None, 7, b"akma.rejected", "", "AKMA.REJECTED", msg_type + "\x00"))
        if rng.random() < _MUTATED_BODY_SHARE:
            data = mutator.mutate(body)
        else:
            data = rng.randbytes(rng.randrange(64))
        if rng.random() < _OVERSIZED_SHARE:
            data = data * (16 * 1024 // max(1, len(data)) + 1)  # past the size cap
        report.by_layer["body"] += 1
        run_target(report, functools.partial(decode_body, kind, data), ContractError, data)
    report.seconds = time.perf_counter() - started
    return report
