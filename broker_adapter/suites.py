"""Named, versioned algorithm suites and the primitives they select.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from broker_adapter.envelope_errors import (
    BadSignatureError,
    DecryptionFailedError,
    InvalidSealInputError,
    UnsupportedSuiteError,
)

SigningPrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
SigningPublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
KemPrivateKey: TypeAlias = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
KemPublicKey: TypeAlias = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey

# Both signature encodings are fixed-length (ECDSA as raw r || s), so the inner message can
# check the field length exactly and no DER variant of the same signature exists.
SIGNATURE_LEN = 64
_P256_SCALAR_LEN = 32
# Order of the P-256 group (SEC 2). (r, s) and (r, n - s) verify alike, so only the low half is
# produced and accepted: one signature, one encoding.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_HALF_ORDER = P256_ORDER // 2


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
# Built once: constructing the algorithm object costs several microseconds per message.
_ECDSA_SHA256_DETERMINISTIC = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_ED25519_TYPES: tuple[type, ...] = (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)
_EC_TYPES: tuple[type, ...] = (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)
_X25519_TYPES: tuple[type, ...] = (x25519.X25519PublicKey, x25519.X25519PrivateKey)
_HYBRID_TYPES: tuple[type, ...] = (hpke.MLKEM768X25519PublicKey, hpke.MLKEM768X25519PrivateKey)


class SignatureAlgorithm(enum.Enum):
    ECDSA_P256_SHA256 = "ecdsa-p256-sha256"
    ED25519 = "ed25519"


class KemAlgorithm(enum.Enum):
    X25519 = "x25519"
    MLKEM768_X25519 = "mlkem768-x25519"


class KeyMode(enum.Enum):
    """How the HPKE KEM is used; the mode also fixes the outer array's layout."""

    # One HPKE seal/open per message: each message has its own ephemeral key.
    PER_MESSAGE = "per-message"
    # One HPKE-wrapped AES-256 epoch key per peer, reused for a bounded number of messages and
    # seconds; AES-256-GCM per message (broker_adapter.epoch, docs/envelope.md).
    EPOCH = "epoch"


_HPKE_KEM = {
    KemAlgorithm.X25519: hpke.KEM.X25519,
    KemAlgorithm.MLKEM768_X25519: hpke.KEM.MLKEM768_X25519,
}

# Length of HPKE's encapsulated key per KEM (RFC 9180 Nenc; X-Wing style hybrid: ML-KEM-768
# ciphertext 1088 bytes + X25519 share 32 bytes). An epoch envelope's wrapped key is exactly
# enc || (32-byte key + 16-byte tag), so its length is checked before any HPKE work.
_HPKE_ENC_LEN = {KemAlgorithm.X25519: 32, KemAlgorithm.MLKEM768_X25519: 1120}
_AEAD_TAG_LEN = 16
_EPOCH_KEY_LEN = 32


@dataclass(frozen=True)
class Suite:
    """One allow-listable combination of algorithms; ``name`` is what travels on the wire."""

    name: str
    envelope_version: int
    signature: SignatureAlgorithm
    kem: KemAlgorithm
    description: str
    mode: KeyMode = KeyMode.PER_MESSAGE
    _hpke: hpke.Suite = field(init=False, repr=False, compare=False)
    # isinstance() against cryptography's ABCs costs about a microsecond each; on the per-message
    # path the answer is remembered per concrete key class instead.
    _type_ok: dict[type, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The HPKE KDF and AEAD are the same in every v1 suite; only the KEM differs.
        built = hpke.Suite(_HPKE_KEM[self.kem], hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
        object.__setattr__(self, "_hpke", built)
        object.__setattr__(self, "_type_ok", {})

    @property
    def wrapped_key_len(self) -> int:
        """Exact length of an epoch envelope's HPKE-wrapped key for this suite's KEM."""
        return _HPKE_ENC_LEN[self.kem] + _EPOCH_KEY_LEN + _AEAD_TAG_LEN

    def _fits(self, key: object, kinds: tuple[type, ...]) -> bool:
        cls = type(key)
        ok = self._type_ok.get(cls)
        if ok is None:
            ok = isinstance(key, kinds)
            self._type_ok[cls] = ok
        return ok

    def accepts_signing_key(self, key: SigningPublicKey | SigningPrivateKey) -> bool:
        if self.signature is SignatureAlgorithm.ED25519:
            return self._fits(key, _ED25519_TYPES)
        if not self._fits(key, _EC_TYPES):
            return False
        return cast(ec.EllipticCurvePublicKey, key).curve.name == "secp256r1"

    def sign(self, key: SigningPrivateKey, data: bytes) -> bytes:
        """Sign deterministically (RFC 6979 for ECDSA), so fixed inputs give fixed bytes."""
        if not self.accepts_signing_key(key):
            raise InvalidSealInputError(f"signing key does not fit suite {self.name}")
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidSealInputError(f"signing key does not fit suite {self.name}")
        der = key.sign(data, _ECDSA_SHA256_DETERMINISTIC)
        r, s = decode_dss_signature(der)
        if s > P256_HALF_ORDER:
            s = P256_ORDER - s
        return r.to_bytes(_P256_SCALAR_LEN, "big") + s.to_bytes(_P256_SCALAR_LEN, "big")

    def verify(self, key: SigningPublicKey, signature: bytes, data: bytes) -> None:
        """Raise ``BadSignatureError`` unless ``signature`` is valid; never returns False."""
        if not self.accepts_signing_key(key):
            raise BadSignatureError(f"signer key type does not fit suite {self.name}")
        if len(signature) != SIGNATURE_LEN:
            raise BadSignatureError("signature has the wrong length")
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, data)
            else:
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    raise BadSignatureError(f"signer key type does not fit suite {self.name}")
                r = int.from_bytes(signature[:_P256_SCALAR_LEN], "big")
                s = int.from_bytes(signature[_P256_SCALAR_LEN:], "big")
                if s > P256_HALF_ORDER:
                    raise BadSignatureError("ECDSA signature is not in low-s form")
                key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
        except InvalidSignature:
            raise BadSignatureError("signature does not verify") from None

    def accepts_kem_key(self, key: KemPublicKey | KemPrivateKey) -> bool:
        if self.kem is KemAlgorithm.X25519:
            return self._fits(key, _X25519_TYPES)
        return self._fits(key, _HYBRID_TYPES)

    def hpke_seal(self, public_key: KemPublicKey, plaintext: bytes, info: bytes) -> bytes:
        """Return ``enc || ciphertext``; the ephemeral key is drawn inside ``cryptography``."""
        if not self.accepts_kem_key(public_key):
            raise InvalidSealInputError(f"recipient key does not fit suite {self.name}")
        return self._hpke.encrypt(plaintext, public_key, info=info)

    def hpke_open(self, private_key: KemPrivateKey, sealed: bytes, info: bytes) -> bytes:
        if not self.accepts_kem_key(private_key):
            raise DecryptionFailedError("decryption key does not fit suite")
        try:
            return self._hpke.decrypt(sealed, private_key, info=info)
        except Exception:  # noqa: BLE001
            # cryptography raises InvalidTag for a bad tag and ValueError for a short or
            # malformed encapsulation; to the caller both mean the same thing, and the
            # detail must not become an oracle.
            raise DecryptionFailedError("HPKE open failed") from None


ENVELOPE_VERSION = 1

# The epoch variant of the P-256/X25519 suite is the default: per message it costs one
# signature, one verification and two AES-GCM calls; the KEM runs once per epoch.
PER_MESSAGE_DEFAULT_SUITE_NAME = "AKMA1-P256-X25519-A256GCM"
DEFAULT_SUITE_NAME = "AKMA1-P256-X25519-A256GCM-E"
EPOCH_SUFFIX = "-E"

_P256 = SignatureAlgorithm.ECDSA_P256_SHA256
_ED = SignatureAlgorithm.ED25519
_BASE_SUITES = (
    (
        "AKMA1-P256-X25519-A256GCM",
        _P256,
        KemAlgorithm.X25519,
        "ECDSA P-256/SHA-256; HPKE DHKEM(X25519), HKDF-SHA256, AES-256-GCM",
    ),
    (
        "AKMA1-ED25519-X25519-A256GCM",
        _ED,
        KemAlgorithm.X25519,
        "Ed25519; HPKE DHKEM(X25519), HKDF-SHA256, AES-256-GCM",
    ),
    (
        "AKMA1-P256-MLKEM768X25519-A256GCM",
        _P256,
        KemAlgorithm.MLKEM768_X25519,
        (
            "ECDSA P-256/SHA-256; HPKE ML-KEM-768+X25519 hybrid KEM, HKDF-SHA256, AES-256-GCM "
            "(post-quantum confidentiality, classical authentication)"
        ),
    ),
)


def _variants() -> list[Suite]:
    out = []
    for name, sig, kem, text in _BASE_SUITES:
        out.append(Suite(name, ENVELOPE_VERSION, sig, kem, text))
        out.append(
            Suite(
                name + EPOCH_SUFFIX,
                ENVELOPE_VERSION,
                sig,
                kem,
                text + "; HPKE wraps a per-peer epoch key, AES-256-GCM per message",
                KeyMode.EPOCH,
            )
        )
    return out


SUITES: Mapping[str, Suite] = MappingProxyType({s.name: s for s in _variants()})

DEFAULT_SUITE = SUITES[DEFAULT_SUITE_NAME]


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise UnsupportedSuiteError(f"unknown suite {name[:64]!r}") from None
