"""Identifiers on the wire: SUPI, GPSI, A-KID and AF_ID, as the message models check them, and
the AF_ID helpers both sides need (an AF builds its AF_ID, the network splits and checks it).
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import Field, StringConstraints

from akma_contract.errors import InvalidAfIdError

__all__ = [
    "KEY_LEN",
    "UA_PROTOCOL_ID_LEN",
    "UA_TLS13_SHARED_KEY",
    "AKid",
    "AfId",
    "Gpsi",
    "Key256",
    "Supi",
    "make_af_id",
    "parse_af_id",
    "validate_fqdn",
]

#: K_AUSF, K_AKMA and K_AF are all 256-bit keys; A-TID is also 256 bits of KDF output.
KEY_LEN: Final = 32

#: TS 33.220 Annex H: a Ua* security protocol identifier is exactly five octets, the first one
#: naming the organisation (0x01 = 3GPP).
UA_PROTOCOL_ID_LEN: Final = 5

#: ``01 00 00 00 07``: shared-key-based TLS 1.3 of TS 33.222, the usual AKMA Ua* protocol.
UA_TLS13_SHARED_KEY: Final = bytes.fromhex("0100000007")

# The patterns follow TS 29.571 (Supi, Gpsi) but without its catch-all ".+" alternative, so a
# typo'd prefix is refused here instead of failing obscurely later.
Supi = Annotated[str, StringConstraints(pattern=r"^(imsi-[0-9]{5,15}|nai-[!-~]{1,250})$")]
Gpsi = Annotated[
    str,
    StringConstraints(max_length=255, pattern=r"^(msisdn-[0-9]{5,15}|extid-[!-?A-~]+@[!-?A-~]+)$"),
]
# Only the A-KID's outline: its full grammar is the network's (network_side.akid), and the AF
# passes it on opaquely.
AKid = Annotated[
    str, StringConstraints(min_length=3, max_length=253, pattern=r"^[!-?A-~]+@[!-~]+$")
]
# Keys are excluded from repr so that logging a model can never print key material.
Key256 = Annotated[bytes, Field(min_length=KEY_LEN, max_length=KEY_LEN, repr=False)]
# AF_ID = FQDN (1..253 octets) || 5-octet Ua* protocol id; parse_af_id checks it in full.
AfId = Annotated[bytes, Field(min_length=6, max_length=258)]

# A DNS label in the preferred name syntax (letters, digits, hyphen; no hyphen at either end).
# Only lower case is accepted: the FQDN is hashed into K_AF byte for byte, so two spellings of
# one name would silently give two keys; refusing the non-canonical one makes that impossible.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_FQDN_LEN: Final = 253
_MIN_FQDN_LABELS: Final = 2


def validate_fqdn(fqdn: str) -> str:
    """Return ``fqdn`` if it is a canonical FQDN: lower-case LDH labels, at least two of them,
    at most 253 characters, no trailing dot, and a non-numeric last label (not an IP address)."""
    if not isinstance(fqdn, str) or not fqdn:
        raise InvalidAfIdError("FQDN must be a non-empty string")
    if len(fqdn) > _MAX_FQDN_LEN:
        raise InvalidAfIdError(f"FQDN longer than {_MAX_FQDN_LEN} characters")
    labels = fqdn.split(".")
    if len(labels) < _MIN_FQDN_LABELS:
        raise InvalidAfIdError("FQDN needs at least two labels")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidAfIdError(
                "FQDN labels must be 1-63 lower-case letters, digits or inner hyphens"
            )
    if labels[-1].isdigit():
        raise InvalidAfIdError("FQDN must not end in a numeric label")
    return fqdn


def make_af_id(fqdn: str, ua_protocol_id: bytes) -> bytes:
    """AF_ID = FQDN of the AF (ASCII) || Ua* security protocol identifier (5 octets)."""
    validate_fqdn(fqdn)
    if not isinstance(ua_protocol_id, bytes) or len(ua_protocol_id) != UA_PROTOCOL_ID_LEN:
        raise InvalidAfIdError(f"Ua* protocol id must be {UA_PROTOCOL_ID_LEN} octets")
    return fqdn.encode("ascii") + ua_protocol_id


def parse_af_id(af_id: bytes) -> tuple[str, bytes]:
    """Split an AF_ID into ``(fqdn, ua_protocol_id)``, validating both parts.

    The Ua* id has a fixed length, so the split is unambiguous even though the FQDN has none.
    """
    if not isinstance(af_id, bytes) or len(af_id) <= UA_PROTOCOL_ID_LEN:
        raise InvalidAfIdError("AF_ID must be bytes: FQDN followed by a 5-octet Ua* protocol id")
    raw_fqdn, ua = af_id[:-UA_PROTOCOL_ID_LEN], af_id[-UA_PROTOCOL_ID_LEN:]
    try:
        fqdn = raw_fqdn.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidAfIdError("AF_ID FQDN part is not ASCII") from None
    return validate_fqdn(fqdn), ua
