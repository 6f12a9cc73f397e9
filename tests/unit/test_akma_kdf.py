"""Known-answer and validation tests for network_side.akma.

Sources: TS 33.535 Annex A and TS 33.220 Annex B.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from akma_contract.errors import InvalidAfIdError, InvalidKeyError, InvalidSupiError
from network_side.akid import format_akid
from network_side.akma import (
    FC_K_AKMA,
    UA_TLS13_SHARED_KEY,
    derive_a_tid,
    derive_k_af,
    derive_k_akma,
    encode_supi,
    kdf,
    make_af_id,
    parse_af_id,
    validate_fqdn,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
VECTORS = REPO_ROOT / "tests" / "vectors"
SHARED_VECTORS = REPO_ROOT.parent / "shared" / "vectors" / "akma-kdf.json"


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _shared_cases() -> list[dict[str, Any]]:
    # The shared file is preferred when it exists beside the clone (CI has it); the copy in
    # tests/vectors keeps the tests runnable without it.
    source = SHARED_VECTORS if SHARED_VECTORS.exists() else VECTORS / "akma-kdf.json"
    cases: list[dict[str, Any]] = _load(source)["cases"]
    return cases


SHARED_CASES = _shared_cases()
EXTRA_CASES: list[dict[str, Any]] = _load(VECTORS / "akma-kdf-extra.json")["cases"]
ALL_CASES = SHARED_CASES + EXTRA_CASES


def test_copy_matches_shared_vectors() -> None:
    if not SHARED_VECTORS.exists():
        pytest.skip("shared/vectors not present beside the clone")
    shared, copy = _load(SHARED_VECTORS), _load(VECTORS / "akma-kdf.json")
    assert copy["cases"] == shared["cases"]
    assert copy["source"] == shared["source"]
    assert "copied_from" in copy


def test_extra_vectors_record_how_they_were_made() -> None:
    extra = _load(VECTORS / "akma-kdf-extra.json")
    assert "openssl" in extra["source"].lower()
    assert (REPO_ROOT / extra["generator"]).is_file()
    assert len(EXTRA_CASES) >= 2
    # The extra set must differ from the shared one in every input that matters.
    shared = SHARED_CASES[0]
    for case in EXTRA_CASES:
        assert case["k_ausf"] != shared["k_ausf"]
        assert encode_supi(case["supi"]) != encode_supi(shared["supi"])
        assert case["af_fqdn"] != shared["af_fqdn"]
    assert any(c["ua_protocol_id"].startswith("010001") for c in EXTRA_CASES)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c["name"])
def test_known_answers(case: dict[str, Any]) -> None:
    k_ausf = bytes.fromhex(case["k_ausf"])
    k_akma = derive_k_akma(k_ausf, case["supi"])
    assert k_akma.hex() == case["k_akma"]
    af_id = make_af_id(case["af_fqdn"], bytes.fromhex(case["ua_protocol_id"]))
    assert af_id.hex() == case["af_id_hex"]
    assert derive_k_af(k_akma, af_id).hex() == case["k_af"]
    if "a_tid" in case:
        a_tid = derive_a_tid(k_ausf, case["supi"])
        assert a_tid.hex() == case["a_tid"]
        assert format_akid(case["rid"], a_tid, case["realm"]) == case["a_kid"]


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c["name"])
def test_kdf_input_string_layout(case: dict[str, Any]) -> None:
    """The recorded S strings pin FC, label, and length fields; recompute HMAC over them."""
    k_ausf = bytes.fromhex(case["k_ausf"])
    s = bytes.fromhex(case["s_k_akma"])
    assert hmac.new(k_ausf, s, hashlib.sha256).hexdigest() == case["k_akma"]
    assert kdf(k_ausf, FC_K_AKMA, "AKMA", encode_supi(case["supi"])) == bytes.fromhex(
        case["k_akma"]
    )


def test_known_wrong_variants_give_other_keys() -> None:
    """The two mistakes seen in other implementations must not match the vectors."""
    case = SHARED_CASES[0]
    k_ausf = bytes.fromhex(case["k_ausf"])
    with_prefix = kdf(k_ausf, 0x80, "AKMA", "imsi-" + case["supi"])
    fc_6a_no_label = kdf(k_ausf, 0x6A, case["supi"])
    assert case["k_akma"] not in {with_prefix.hex(), fc_6a_no_label.hex()}
    # And the prefix is stripped, not hashed: both spellings derive the same key.
    assert derive_k_akma(k_ausf, "imsi-" + case["supi"]) == derive_k_akma(k_ausf, case["supi"])


def test_generic_kdf_encodes_lengths_big_endian() -> None:
    key = b"k" * 32
    p = b"x" * 300
    expected = hmac.new(key, b"\x10" + p + b"\x01\x2c" + b"" + b"\x00\x00", hashlib.sha256)
    assert kdf(key, 0x10, p, b"") == expected.digest()


def test_generic_kdf_nfkc_normalises_strings() -> None:
    key = b"k" * 32
    # U+FB01 (LATIN SMALL LIGATURE FI) is NFKC-equivalent to "fi".
    assert kdf(key, 0x01, "\ufb01") == kdf(key, 0x01, b"fi")
    assert kdf(key, 0x01, "é") == kdf(key, 0x01, "e\u0301") == kdf(key, 0x01, "é".encode())


def test_generic_kdf_limits() -> None:
    with pytest.raises(ValueError):
        kdf(b"k", 0x100)
    with pytest.raises(ValueError):
        kdf(b"k", 0x01, b"x" * 0x10000)
    with pytest.raises(InvalidKeyError):
        kdf(b"", 0x01)
    assert len(kdf(b"k", 0x01, b"x" * 0xFFFF)) == 32


@pytest.mark.parametrize("bad", [b"", b"k" * 31, b"k" * 33, "k" * 32])
def test_key_length_validated(bad: Any) -> None:
    with pytest.raises(InvalidKeyError):
        derive_k_akma(bad, "001010000000001")
    with pytest.raises(InvalidKeyError):
        derive_a_tid(bad, "001010000000001")
    with pytest.raises(InvalidKeyError):
        derive_k_af(bad, make_af_id("af.example.com", UA_TLS13_SHARED_KEY))


@pytest.mark.parametrize(
    ("supi", "encoded"),
    [("imsi-001010000000001", b"001010000000001"), ("00101", b"00101"), ("imsi-12345", b"12345")],
)
def test_encode_supi(supi: str, encoded: bytes) -> None:
    assert encode_supi(supi) == encoded


@pytest.mark.parametrize(
    "supi",
    [
        "",
        "imsi-",
        "imsi-1234",
        "imsi-1234567890123456",
        "IMSI-00101",
        "imsi-0010a",
        "imsi-imsi-00101",
        " 00101",
        "00101\n",
        "nai-user@example.com",
        "gci-x",
        "١٢٣٤٥",
    ],
)
def test_encode_supi_refuses(supi: str) -> None:
    with pytest.raises(InvalidSupiError):
        encode_supi(supi)


def test_nai_supi_refusal_says_why() -> None:
    with pytest.raises(InvalidSupiError, match="NAI"):
        derive_k_akma(b"k" * 32, "nai-alice@example.com")


def test_af_id_round_trip() -> None:
    af_id = make_af_id("af1.example.com", bytes.fromhex("0100011301"))
    assert af_id == b"af1.example.com\x01\x00\x01\x13\x01"
    assert parse_af_id(af_id) == ("af1.example.com", bytes.fromhex("0100011301"))


@pytest.mark.parametrize(
    "fqdn",
    [
        "",
        "localhost",
        "AF.example.com",
        "af.example.com.",
        "-af.example.com",
        "af-.example.com",
        "af..example.com",
        "af_1.example.com",
        "10.0.0.1",
        "a" * 64 + ".com",
        ".".join(["a" * 63] * 4) + ".com",
        "bücher.example",
        "af example.com",
    ],
)
def test_fqdn_refused(fqdn: str) -> None:
    with pytest.raises(InvalidAfIdError):
        validate_fqdn(fqdn)
    with pytest.raises(InvalidAfIdError):
        make_af_id(fqdn, UA_TLS13_SHARED_KEY)


def test_fqdn_limits_accepted() -> None:
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(longest) == 253
    assert validate_fqdn(longest) == longest
    assert validate_fqdn("xn--bcher-kva.example") == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "ua", [b"", b"\x01\x00\x00\x00", b"\x01\x00\x00\x00\x07\x00", "0100000007"]
)
def test_ua_protocol_id_must_be_five_octets(ua: Any) -> None:
    with pytest.raises(InvalidAfIdError):
        make_af_id("af.example.com", ua)


@pytest.mark.parametrize(
    "af_id",
    [
        b"",
        b"\x01\x00\x00\x00\x07",
        b"\xff.example.com\x01\x00\x00\x00\x07",
        "x" * 20,
        b"nodot\x01\x00\x00\x00\x07",
    ],
)
def test_parse_af_id_refuses(af_id: Any) -> None:
    with pytest.raises(InvalidAfIdError):
        parse_af_id(af_id)
    if isinstance(af_id, bytes):
        with pytest.raises(InvalidAfIdError):
            derive_k_af(b"k" * 32, af_id)


def test_a_tid_differs_from_k_akma_and_binds_supi() -> None:
    k = bytes(range(32))
    assert derive_a_tid(k, "00101") != derive_k_akma(k, "00101")
    assert derive_a_tid(k, "00101") != derive_a_tid(k, "00102")
    assert len(derive_a_tid(k, "00101")) == 32
