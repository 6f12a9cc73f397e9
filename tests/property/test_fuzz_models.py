"""Fuzzing the envelope decoder and the message models: only their own errors may escape.

Two engines over the same seed corpus of real envelopes and bodies (``reliability.fuzz``):
the custom mutator at the small scale of ``make test`` (``make soak`` runs it at 100,000
inputs per target), and hypothesis choosing the mutations, which shrinks any failure to a
minimal input. A self-test proves the harness reports escapes and forgeries at all.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from akma_contract.errors import ContractError
from akma_contract.messages import MESSAGE_TYPES, AkmaMessage, decode_body
from broker_adapter.envelope_errors import EnvelopeError
from reliability import fuzz
from reliability.result import SMALL

_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_MODEL_SEEDS = fuzz.model_seeds()


@pytest.fixture(scope="module")
def world() -> fuzz.FuzzWorld:
    return fuzz.FuzzWorld.create()


# ---- the custom mutator, as make soak runs it ------------------------------------------------


def test_envelope_decoder_only_raises_envelope_errors(world: fuzz.FuzzWorld) -> None:
    report = fuzz.fuzz_envelopes(world, SMALL.fuzz_inputs, seed=3)
    assert report.inputs == SMALL.fuzz_inputs
    assert report.escape_count == 0, report.escapes
    assert report.forgeries == 0
    # The mutants reach deep checks, not only the parser: decryption, signature, bindings.
    assert set(report.by_layer) == {"outer", "inner", "resigned"}
    for code in ("malformed", "decryption_failed", "bad_signature", "unsupported_suite"):
        assert report.outcomes[code] > 0, code
    # Re-signed edits that the sender could have sent do open; the contract allows that.
    assert report.outcomes["accepted"] > 0


def test_message_models_only_raise_contract_errors() -> None:
    report = fuzz.fuzz_models(SMALL.fuzz_inputs, seed=3)
    assert report.inputs == SMALL.fuzz_inputs
    assert report.escape_count == 0, report.escapes
    assert report.outcomes["invalid_body"] > 0 and report.outcomes["unknown_message_type"] > 0
    assert report.outcomes["accepted"] > 0


def test_seed_corpus_is_real_and_covers_the_contract(world: fuzz.FuzzWorld) -> None:
    # Unmutated seeds open and decode, so every mutant starts one change away from valid input.
    for seed in world.seeds:
        opened = world.decode(seed.envelope, seed.sender.name)
        assert decode_body(opened.msg_type, opened.body)  # type: ignore[attr-defined]
    assert {t for t, _ in _MODEL_SEEDS} == set(MESSAGE_TYPES)


def test_harness_reports_escapes_and_forgeries(world: fuzz.FuzzWorld) -> None:
    report = fuzz.FuzzReport("self-test")
    empty: dict[str, int] = {}
    fuzz.run_target(report, lambda: empty["missing"], EnvelopeError, b"x")
    fuzz.run_target(report, lambda: (_ for _ in ()).throw(EnvelopeError("ok")), EnvelopeError, b"y")
    assert report.escape_count == 1 and "KeyError" in report.escapes[0][1]
    assert report.outcomes["envelope_error"] == 1

    class Gullible(fuzz.FuzzWorld):
        def decode(self, data: bytes, user_id: str | None) -> object:
            return object()  # a decoder that accepts anything

    gullible = Gullible(world.codec, world.me, world.recipient_keys, world.seeds)
    assert fuzz.fuzz_envelopes(gullible, 200, seed=1).forgeries > 0


# ---- hypothesis choosing the mutations -------------------------------------------------------


@st.composite
def byte_mutants(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        at = draw(st.integers(0, len(data)))
        if op == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            del data[at:]
        elif op == 2:
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=40)
    | st.binary(max_size=300) | st.floats(allow_nan=True),
    lambda children: st.lists(children, max_size=12)
    | st.dictionaries(st.text(max_size=12) | st.integers(0, 9), children, max_size=6),
    max_leaves=25,
)


@_SETTINGS
@given(data=st.data())
def test_hypothesis_envelope_mutants(world: fuzz.FuzzWorld, data: st.DataObject) -> None:
    mutant = data.draw(byte_mutants([s.envelope for s in world.seeds]))
    try:
        world.decode(mutant, data.draw(st.sampled_from([None, "af1.example.com"])))
    except EnvelopeError:
        return
    # Only an unchanged seed may open.
    assert mutant in {s.envelope for s in world.seeds}


@_SETTINGS
@given(data=st.data())
def test_hypothesis_inner_plaintexts(world: fuzz.FuzzWorld, data: st.DataObject) -> None:
    # Hostile plaintext behind valid encryption: msgpack values of any shape, or mutated inners.
    seed = data.draw(st.sampled_from(world.seeds))
    if data.draw(st.booleans()):
        inner = msgpack.packb(data.draw(_msgpack_values), use_bin_type=True)
    else:
        inner = data.draw(byte_mutants([seed.inner]))
    envelope = world.reencrypt(seed, inner, random.Random(0))
    try:
        world.decode(envelope, None)
    except EnvelopeError:
        return
    assert inner == seed.inner


@_SETTINGS
@given(
    msg_type=st.sampled_from(sorted(MESSAGE_TYPES)) | st.text(max_size=30),
    value=_msgpack_values,
)
def test_hypothesis_model_values(msg_type: str, value: Any) -> None:
    body = msgpack.packb(value, use_bin_type=True)
    with contextlib.suppress(ContractError):
        assert isinstance(decode_body(msg_type, body), AkmaMessage)


@_SETTINGS
@given(data=st.data())
def test_hypothesis_model_byte_mutants(data: st.DataObject) -> None:
    msg_type, _ = data.draw(st.sampled_from(_MODEL_SEEDS))
    body = data.draw(byte_mutants([b for _, b in _MODEL_SEEDS]))
    with contextlib.suppress(ContractError):
        decode_body(msg_type, body)
