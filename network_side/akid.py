"""A-KID: the AKMA Key Identifier as an RFC 7542 NAI, ``username@realm``. Pure.

TS 33.535 fixes the parts: the username carries the Routing Indicator (RID, 1-4 decimal digits)
and the A-TID, the realm carries the home network identifier. The *textual* encoding of the
A-TID and the separator between RID and A-TID could not be confirmed from the available text,
so this module chooses one and is the single place to change it:

    ``<RID>.<A-TID as 64 lower-case hex digits>@<realm>``
    e.g. ``0.5f2c...9a1e@5gc.mnc001.mcc001.3gppnetwork.org``

Why this shape (see docs/akma.md for the longer argument):

* ``.`` is the one separator RFC 7542 gives usernames a meaning for (dot-separated strings);
  ``!`` would read as a decorated NAI and ``+``/``=`` invite escaping bugs.
* Hex survives every case-folding hop (realms are case-insensitive, and some systems lower-case
  whole NAIs) where base64url would not; it costs 21 characters, well within the limit.
* Only one spelling is accepted (lower case throughout, no leading or trailing dots), so
  ``format_akid(*parse_akid(s)) == s`` for every accepted ``s`` and an A-KID string can key the
  AAnF's context store directly, with no second canonicalisation step to forget.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from akma_contract.errors import InvalidAfIdError, InvalidAkidError
from network_side.akma import KEY_LEN, validate_fqdn

__all__ = ["MAX_NAI_LEN", "Akid", "format_akid", "home_network_realm", "parse_akid"]

#: RFC 7542 requires support for NAIs of at least 253 octets; we refuse anything longer so that
#: every A-KID we issue is one any compliant peer must accept.
MAX_NAI_LEN: Final = 253

_RID = re.compile(r"[0-9]{1,4}")
_A_TID_HEX = re.compile(rf"[0-9a-f]{{{2 * KEY_LEN}}}")


class Akid(NamedTuple):
    """The three parts of an A-KID; ``nai`` gives its one accepted textual form."""

    rid: str
    a_tid: bytes
    realm: str

    @property
    def nai(self) -> str:
        return format_akid(self.rid, self.a_tid, self.realm)


def _check_realm(realm: str) -> None:
    try:
        validate_fqdn(realm)
    except InvalidAfIdError as exc:
        raise InvalidAkidError(f"realm: {exc.detail}") from None


def format_akid(rid: str, a_tid: bytes, realm: str) -> str:
    """Build the A-KID NAI from a routing indicator, a 32-octet A-TID and the home realm."""
    if not isinstance(rid, str) or not _RID.fullmatch(rid):
        raise InvalidAkidError("routing indicator must be 1 to 4 decimal digits")
    if not isinstance(a_tid, bytes) or len(a_tid) != KEY_LEN:
        raise InvalidAkidError(f"A-TID must be {KEY_LEN} octets")
    _check_realm(realm)
    nai = f"{rid}.{a_tid.hex()}@{realm}"
    if len(nai) > MAX_NAI_LEN:
        raise InvalidAkidError(f"A-KID longer than {MAX_NAI_LEN} octets")
    return nai


def parse_akid(nai: str) -> Akid:
    """Parse an A-KID NAI; refuse anything that :func:`format_akid` would not have produced.

    Every refusal is an ``InvalidAkidError`` (code ``invalid_akid``) saying which part failed;
    no other exception escapes for any ``str`` input.
    """
    if not isinstance(nai, str):
        raise InvalidAkidError("A-KID must be a string")
    # The length check comes first so the regular expressions below never see huge inputs.
    if not nai or len(nai) > MAX_NAI_LEN:
        raise InvalidAkidError(f"A-KID must be 1 to {MAX_NAI_LEN} characters")
    if not nai.isascii():
        raise InvalidAkidError("A-KID must be ASCII")
    username, at, realm = nai.partition("@")
    if not at or "@" in realm:
        raise InvalidAkidError("A-KID must contain exactly one '@'")
    if not username:
        raise InvalidAkidError("A-KID username is empty")
    rid, dot, a_tid_hex = username.partition(".")
    if not dot:
        raise InvalidAkidError("A-KID username must be <RID>.<A-TID>")
    if not _RID.fullmatch(rid):
        raise InvalidAkidError("routing indicator must be 1 to 4 decimal digits")
    if not _A_TID_HEX.fullmatch(a_tid_hex):
        raise InvalidAkidError(f"A-TID must be {2 * KEY_LEN} lower-case hex digits")
    _check_realm(realm)
    return Akid(rid, bytes.fromhex(a_tid_hex), realm)


def home_network_realm(mcc: str, mnc: str) -> str:
    """The 5GC home network domain of TS 23.003 (``5gc.mnc<MNC>.mcc<MCC>.3gppnetwork.org``).

    A two-digit MNC is zero-padded to three digits, as that clause requires. Using this as the
    A-KID realm is a reasonable default, not a confirmed rule; any valid realm is accepted.
    """
    if not re.fullmatch(r"[0-9]{3}", mcc) or not re.fullmatch(r"[0-9]{2,3}", mnc):
        raise InvalidAkidError("MCC must be 3 digits and MNC 2 or 3 digits")
    return f"5gc.mnc{mnc.zfill(3)}.mcc{mcc}.3gppnetwork.org"
