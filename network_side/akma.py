"""AKMA key derivation (TS 33.535 Annex A over the generic KDF of TS 33.220 Annex B). Pure.

Every derived key is HMAC-SHA-256(Key, S) with ``S = FC || P0 || L0 || P1 || L1 || ...``, where
each ``Li`` is the octet length of ``Pi`` as a 2-octet big-endian integer:

=========  ======  ====  ===========  ======
output     key     FC    P0           P1
=========  ======  ====  ===========  ======
K_AKMA     K_AUSF  0x80  "AKMA"       SUPI
A-TID      K_AUSF  0x81  "A-TID"      SUPI
K_AF       K_AKMA  0x82  AF_ID        -
=========  ======  ====  ===========  ======

The SUPI is encoded as in the K_AMF derivation (TS 33.501 A.7.0): for an IMSI, its digit string
without the ``imsi-`` type prefix. Known open-source attempts get exactly these two details wrong
(a different FC without the "AKMA" label; keeping the prefix), so both are pinned by known-answer
tests in ``tests/unit/test_akma_kdf.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from typing import Final

from akma_contract.errors import InvalidKeyError, InvalidSupiError

# The AF_ID helpers and key sizes are the contract's; re-exported for the network's own modules.
from akma_contract.identifiers import (
    KEY_LEN,
    UA_PROTOCOL_ID_LEN,
    UA_TLS13_SHARED_KEY,
    make_af_id,
    parse_af_id,
    validate_fqdn,
)

__all__ = [
    "FC_A_TID",
    "FC_K_AF",
    "FC_K_AKMA",
    "KEY_LEN",
    "UA_PROTOCOL_ID_LEN",
    "UA_TLS13_SHARED_KEY",
    "derive_a_tid",
    "derive_k_af",
    "derive_k_akma",
    "encode_supi",
    "kdf",
    "make_af_id",
    "parse_af_id",
    "validate_fqdn",
]

FC_K_AKMA: Final = 0x80
FC_A_TID: Final = 0x81
FC_K_AF: Final = 0x82

_MAX_PARAM_LEN: Final = 0xFFFF
_MAX_FC: Final = 0xFF
_IMSI_DIGITS = re.compile(r"[0-9]{5,15}")


def kdf(key: bytes, fc: int, *params: bytes | str) -> bytes:
    """The generic KDF of TS 33.220 Annex B.2: HMAC-SHA-256 over ``FC || P0 || L0 || ...``.

    A ``str`` parameter is NFKC-normalised and UTF-8 encoded first (Annex B.2.1.2), so that a
    string and its compatibility-equivalent spelling derive the same key.
    """
    if not isinstance(key, bytes) or not key:
        raise InvalidKeyError("KDF key must be non-empty bytes")
    if not 0 <= fc <= _MAX_FC:
        raise ValueError(f"FC must be one octet, got {fc!r}")
    parts = [bytes([fc])]
    for param in params:
        octets = (
            unicodedata.normalize("NFKC", param).encode("utf-8")
            if isinstance(param, str)
            else bytes(param)
        )
        if len(octets) > _MAX_PARAM_LEN:
            # The length field is two octets; a longer parameter cannot be encoded at all.
            raise ValueError(f"KDF parameter of {len(octets)} octets exceeds 65535")
        parts.append(octets)
        parts.append(len(octets).to_bytes(2, "big"))
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def encode_supi(supi: str) -> bytes:
    """The SUPI as it enters the KDF: the IMSI digits only (TS 33.501 A.7.0).

    Accepts ``imsi-<5..15 digits>`` or the bare digit string. A network-specific-identifier SUPI
    (``nai-...``) is refused: its exact KDF encoding could not be confirmed from the texts this
    project works from, and a guessed encoding would produce keys that silently differ from a
    real UE's. Refusing makes the gap visible instead (see docs/akma.md).
    """
    if not isinstance(supi, str):
        raise InvalidSupiError("SUPI must be a string")
    if supi.startswith("nai-"):
        raise InvalidSupiError(
            "NAI-form SUPI is not supported for key derivation (unconfirmed encoding)"
        )
    digits = supi.removeprefix("imsi-")
    if not _IMSI_DIGITS.fullmatch(digits):
        raise InvalidSupiError("SUPI must be imsi- followed by 5 to 15 digits, or the bare digits")
    return digits.encode("ascii")


def _check_key(name: str, key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise InvalidKeyError(f"{name} must be {KEY_LEN} bytes")


def derive_k_akma(k_ausf: bytes, supi: str) -> bytes:
    """K_AKMA = KDF(K_AUSF, 0x80, "AKMA", SUPI)."""
    _check_key("K_AUSF", k_ausf)
    return kdf(k_ausf, FC_K_AKMA, b"AKMA", encode_supi(supi))


def derive_a_tid(k_ausf: bytes, supi: str) -> bytes:
    """A-TID = KDF(K_AUSF, 0x81, "A-TID", SUPI), 32 octets."""
    _check_key("K_AUSF", k_ausf)
    return kdf(k_ausf, FC_A_TID, b"A-TID", encode_supi(supi))


def derive_k_af(k_akma: bytes, af_id: bytes) -> bytes:
    """K_AF = KDF(K_AKMA, 0x82, AF_ID); ``af_id`` is checked with :func:`parse_af_id` first."""
    _check_key("K_AKMA", k_akma)
    parse_af_id(af_id)
    return kdf(k_akma, FC_K_AF, af_id)
