"""A-KID NAI formatting and parsing (network_side.akid)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from akma_contract.errors import InvalidAkidError
from network_side.akid import MAX_NAI_LEN, Akid, format_akid, home_network_realm, parse_akid

A_TID = bytes.fromhex("67d8dee47b7d74e6f457b7b23d5806746ed87b920aa8035f37b494c1bfc5d83b")
REALM = "5gc.mnc001.mcc001.3gppnetwork.org"
NAI = f"0.{A_TID.hex()}@{REALM}"


def test_format_and_parse_example() -> None:
    assert format_akid("0", A_TID, REALM) == NAI
    parsed = parse_akid(NAI)
    assert parsed == Akid("0", A_TID, REALM)
    assert parsed.nai == NAI


def test_rid_keeps_leading_zeros() -> None:
    nai = format_akid("0012", A_TID, REALM)
    assert nai.startswith("0012.")
    assert parse_akid(nai).rid == "0012"


def test_home_network_realm_pads_two_digit_mnc() -> None:
    assert home_network_realm("001", "01") == REALM
    assert home_network_realm("310", "260") == "5gc.mnc260.mcc310.3gppnetwork.org"
    for mcc, mnc in [("01", "01"), ("001", "1"), ("001", "0001"), ("abc", "01")]:
        with pytest.raises(InvalidAkidError):
            home_network_realm(mcc, mnc)


HEX = A_TID.hex()


@pytest.mark.parametrize(
    "nai",
    [
        "",
        f"0.{HEX}",  # no realm
        f"0.{HEX}@",  # empty realm
        f"@{REALM}",  # empty username
        f"{HEX}@{REALM}",  # no RID
        f".{HEX}@{REALM}",  # empty RID
        f"12345.{HEX}@{REALM}",  # RID too long
        f"a.{HEX}@{REALM}",  # RID not digits
        f"0.{HEX[:-2]}@{REALM}",  # A-TID too short
        f"0.{HEX}00@{REALM}",  # A-TID too long
        f"0.{HEX.upper()}@{REALM}",  # non-canonical hex
        f"0.{HEX[:-1]}g@{REALM}",  # not hex
        f"0..{HEX}@{REALM}",  # empty part
        f"0.{HEX}.@{REALM}",  # trailing dot in username
        f"0.{HEX}@{REALM}@x.org",  # two @
        f"0.{HEX}@{REALM.upper()}",  # non-canonical realm
        f"0.{HEX}@{REALM}.",  # trailing dot
        f"0.{HEX}@localhost",  # single-label realm
        f"0.{HEX}@-bad.example.org",
        f"0.{HEX}@bad..example.org",
        f"0.{HEX}@ex ample.org",
        f"0 .{HEX}@{REALM}",
        f"0.{HEX}@bücher.example",  # not ASCII
        f"0!0.{HEX}@{REALM}",  # decorated-NAI look-alike
        f"0.{HEX}@" + ".".join(["a" * 63] * 3) + ".org",  # over 253 octets in total
        "x" * 10_000,
    ],
)
def test_malformed_refused(nai: str) -> None:
    with pytest.raises(InvalidAkidError):
        parse_akid(nai)


@pytest.mark.parametrize(
    ("rid", "a_tid", "realm"),
    [
        ("", A_TID, REALM),
        ("00000", A_TID, REALM),
        ("1a", A_TID, REALM),
        ("0", A_TID[:31], REALM),
        ("0", A_TID.hex(), REALM),
        ("0", A_TID, "Upper.Example.org"),
        ("0", A_TID, ".".join(["a" * 63] * 3) + ".org"),  # realm valid alone, NAI too long
    ],
)
def test_format_refuses(rid: Any, a_tid: Any, realm: str) -> None:
    with pytest.raises(InvalidAkidError):
        format_akid(rid, a_tid, realm)


def test_error_is_coded() -> None:
    with pytest.raises(InvalidAkidError) as info:
        parse_akid("nope")
    assert info.value.code == "invalid_akid"
    assert "@" in info.value.detail


def test_not_a_string_refused() -> None:
    with pytest.raises(InvalidAkidError):
        parse_akid(b"0.aa@example.org")  # type: ignore[arg-type]


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_realm = (
    st.lists(_label, min_size=2, max_size=5)
    .map(".".join)
    .filter(lambda r: not r.rsplit(".", 1)[-1].isdigit())
)


@given(
    rid=st.from_regex(r"[0-9]{1,4}", fullmatch=True),
    a_tid=st.binary(min_size=32, max_size=32),
    realm=_realm,
)
def test_round_trip(rid: str, a_tid: bytes, realm: str) -> None:
    nai = format_akid(rid, a_tid, realm)
    assert len(nai) <= MAX_NAI_LEN
    assert parse_akid(nai) == Akid(rid, a_tid, realm)


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_invalid_akid(text: str) -> None:
    """h11-style invariant: arbitrary input is either an A-KID or InvalidAkidError, nothing else,
    and whatever parses re-formats to exactly the same string (one spelling per A-KID)."""
    try:
        parsed = parse_akid(text)
    except InvalidAkidError:
        return
    assert parsed.nai == text


@given(st.sampled_from(list(NAI)), st.integers(0, len(NAI) - 1))
def test_single_character_mutations_never_crash(ch: str, pos: int) -> None:
    mutated = NAI[:pos] + ch + NAI[pos + 1 :]
    with contextlib.suppress(InvalidAkidError):
        assert parse_akid(mutated).nai == mutated
