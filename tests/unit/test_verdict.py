"""``verdict.decide``, table-driven over every combination of one message's stage results.

Pure: no broker, no event loop. Each row is what the stages answered; the expected column is
the next stage or the final verdict (outcome, release of the claim, re-send of a cached answer).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from prometheus_client import REGISTRY

from akma_contract.errors import InvalidBodyError
from broker_adapter import receive_metrics
from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope_errors import (
    BadSignatureError,
    InvalidSealInputError,
    NoRecipientKeyError,
    ReplayConflictError,
    StaleMessageError,
    TrustStoreError,
)
from broker_adapter.errors import (
    BrokerAdapterError,
    Fault,
    PublishNackedError,
    UnexpectedResponderError,
    fault_of,
)
from broker_adapter.replay import Claim, ClaimOutcome, ReplayStoreError
from broker_adapter.verdict import (
    PENDING,
    SKIPPED,
    Ack,
    DeadLetter,
    Progress,
    Reply,
    Requeue,
    SealedReply,
    Stage,
    Verdict,
    decide,
    outcome_for,
)
from network_side.errors import ConflictError, StoreError, UnknownAkidError
from tests.unit.envelope_helpers import POLICY, counter_rng, fixed_clock, three_party_world

KEY = bytes(24)
PROCESS = Claim(ClaimOutcome.PROCESS, "af1.example.com", bytes(16), KEY, token=bytes(8))
RECLAIMED = Claim(ClaimOutcome.PROCESS, "af1.example.com", bytes(16), KEY, token=bytes(8),
                  reclaimed=True)
DONE = Claim(ClaimOutcome.DUPLICATE_DONE, "af1.example.com", bytes(16), KEY,
             cached_response=b"sealed answer")
DONE_NO_ANSWER = Claim(ClaimOutcome.DUPLICATE_DONE, "af1.example.com", bytes(16), KEY)
BUSY = Claim(ClaimOutcome.DUPLICATE_IN_PROGRESS, "af1.example.com", bytes(16), KEY,
             retry_after_ms=100)
REPLY = Reply("akma.answer", b"body")
SEALED = SealedReply("akma.answer", b"sealed", bytes(16))


def _opened() -> Any:
    world = three_party_world()
    clock = fixed_clock()
    sender = EnvelopeCodec(identity=world.af1.identity, trust=world.trust, policy=POLICY,
                           clock=clock, rng=counter_rng(1))
    receiver = EnvelopeCodec(identity=world.network.identity, trust=world.trust, policy=POLICY,
                             clock=clock, rng=counter_rng(9))
    data = sender.encode(recipient="network", msg_type="akma.t", body=b"x").data
    return receiver.decode(data, broker_user_id="af1.example.com")


OPENED = _opened()


def _p(**kw: Any) -> Progress:
    return Progress(**kw)


def _ok_through_handle(reply: Any = REPLY, claim: Any = PROCESS) -> dict[str, Any]:
    return {"opened": OPENED, "claim": claim, "reply": reply}


# (stage results, expected next stage or verdict)
TABLE: list[tuple[Progress, Stage | Verdict]] = [
    (_p(), Stage.OPEN),
    (_p(opened=BadSignatureError("x")), Verdict(DeadLetter("bad_signature", "x"),
                                                fault=Fault.REMOTE)),
    (_p(opened=OPENED), Stage.CLAIM),
    (_p(opened=OPENED, claim=ReplayConflictError("y")),
     Verdict(DeadLetter("replay_conflict", "y"), fault=Fault.REMOTE)),
    (_p(opened=OPENED, claim=StaleMessageError("z")),
     Verdict(DeadLetter("stale", "z"), fault=Fault.REMOTE)),
    (_p(opened=OPENED, claim=DONE), Verdict(Ack(), resend_cached=True)),
    (_p(opened=OPENED, claim=DONE_NO_ANSWER), Verdict(Ack())),
    (_p(opened=OPENED, claim=BUSY), Verdict(Requeue("another worker holds this message"))),
    (_p(opened=OPENED, claim=PROCESS), Stage.HANDLE),
    (_p(opened=OPENED, claim=RECLAIMED), Stage.HANDLE),
    (_p(opened=OPENED, claim=SKIPPED), Stage.HANDLE),
    # A handler's remote fault dead-letters and records the claim as done (its retries must not
    # run the handler again); our fault requeues and frees the claim for the redelivery.
    (_p(**_ok_through_handle(UnexpectedResponderError("u"))),
     Verdict(DeadLetter("unexpected_responder", "u"), finish=True, fault=Fault.REMOTE)),
    (_p(**_ok_through_handle(UnexpectedResponderError("u"), SKIPPED)),
     Verdict(DeadLetter("unexpected_responder", "u"), fault=Fault.REMOTE)),
    (_p(**_ok_through_handle(REPLY)), Stage.SEAL),
    (_p(**_ok_through_handle(None)), Stage.COMPLETE),
    (_p(**_ok_through_handle(None, SKIPPED)), Verdict(Ack())),
    (_p(**_ok_through_handle(), sealed=NoRecipientKeyError("af2")),
     Verdict(DeadLetter("no_recipient_key", "af2"), finish=True, fault=Fault.REMOTE)),
    (_p(**_ok_through_handle(), sealed=SEALED), Stage.COMPLETE),
    (_p(**_ok_through_handle(), sealed=SEALED, completed=True), Stage.PUBLISH),
    # Ownership lost to a reclaim changes nothing: the handler's effects stand.
    (_p(**_ok_through_handle(), sealed=SEALED, completed=False), Stage.PUBLISH),
    (_p(**_ok_through_handle(), sealed=SEALED, completed=True, published=True), Verdict(Ack())),
    (_p(**_ok_through_handle(None), completed=True), Verdict(Ack())),
    (_p(**_ok_through_handle(REPLY, SKIPPED), sealed=SEALED), Stage.PUBLISH),
]


@pytest.mark.parametrize(("progress", "expected"), TABLE)
def test_decide_table(progress: Progress, expected: Stage | Verdict) -> None:
    assert decide(progress) == expected


LOCAL_FAILURES: list[Exception] = [
    ReplayStoreError("down"), TrustStoreError("bad"), InvalidSealInputError("ours"),
    PublishNackedError("q"), RuntimeError("bug"), KeyError("bug"),
]


@pytest.mark.parametrize("exc", LOCAL_FAILURES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("stage", ["opened", "claim", "reply", "sealed", "completed", "published"])
def test_our_own_fault_requeues_at_every_stage(exc: Exception, stage: str) -> None:
    progress = _p(opened=OPENED, claim=PROCESS, reply=REPLY, sealed=SEALED, completed=True)
    setattr(progress, stage, exc)
    verdict = decide(progress)
    assert isinstance(verdict, Verdict)
    assert isinstance(verdict.outcome, Requeue)
    assert verdict.fault is Fault.LOCAL
    # Freed only where the claim is still ours and unfinished, so a redelivery runs it again.
    assert verdict.release is (stage in ("reply", "sealed"))


def test_every_combination_ends_or_names_a_stage_not_yet_run() -> None:
    opened = [PENDING, OPENED, BadSignatureError("x")]
    claims = [PENDING, SKIPPED, PROCESS, DONE, BUSY, ReplayStoreError("d")]
    replies = [PENDING, REPLY, None, RuntimeError("bug")]
    sealed = [PENDING, SEALED, NoRecipientKeyError("n")]
    completed = [PENDING, True, False, ReplayStoreError("d")]
    published = [PENDING, True, PublishNackedError("p")]
    fields = ("opened", "claim", "reply", "sealed", "completed", "published")
    for values in itertools.product(opened, claims, replies, sealed, completed, published):
        progress = Progress(**dict(zip(fields, values, strict=True)))
        result = decide(progress)
        if isinstance(result, Stage):
            assert getattr(progress, _FIELDS[result]) is PENDING, values
        else:
            assert isinstance(result.outcome, Ack | DeadLetter | Requeue)
            assert not (result.release or result.finish) or isinstance(progress.claim, Claim)
            assert not (result.release and result.finish)
            if result.fault is not None:
                assert isinstance(result.outcome, DeadLetter) is (result.fault is Fault.REMOTE)


_FIELDS = {Stage.OPEN: "opened", Stage.CLAIM: "claim", Stage.HANDLE: "reply",
           Stage.SEAL: "sealed", Stage.COMPLETE: "completed", Stage.PUBLISH: "published"}


def test_outcome_for_is_the_one_mapping() -> None:
    assert outcome_for(BadSignatureError("sig")) == DeadLetter("bad_signature", "sig")
    assert outcome_for(ReplayStoreError("down")).__class__ is Requeue
    assert "replay_store_unavailable" in outcome_for(ReplayStoreError("down")).detail  # type: ignore[union-attr]
    assert isinstance(outcome_for(ValueError("bug")), Requeue)

    class Foreign(Exception):
        code = "foreign_remote"
        fault = Fault.REMOTE

    assert outcome_for(Foreign()) == DeadLetter("foreign_remote", "")
    assert fault_of(BrokerAdapterError()) is Fault.LOCAL


def test_network_side_errors_say_whose_fault_they_are() -> None:
    assert outcome_for(ConflictError("a-kid of another supi")) == DeadLetter(
        "conflict", "a-kid of another supi")
    assert isinstance(outcome_for(StoreError("disk")), Requeue)
    assert isinstance(outcome_for(UnknownAkidError("x")), DeadLetter)


def test_a_contract_error_is_the_sender_s_fault_without_depending_on_broker_adapter() -> None:
    assert fault_of(InvalidBodyError("x")) is Fault.REMOTE
    assert isinstance(outcome_for(InvalidBodyError("x")), DeadLetter)


def test_accepted_message_types_are_bounded_per_queue() -> None:
    queue = "bounded.queue"
    for i in range(receive_metrics.MAX_MSG_TYPE_LABELS + 10):
        receive_metrics.count(SKIPPED, OPENED.__class__(**{
            **{f: getattr(OPENED, f) for f in OPENED.__dataclass_fields__},
            "msg_type": f"akma.t{i}"}), queue)
    labels = {s.labels["msg_type"] for m in REGISTRY.collect()
              if m.name == "akma_secure_accepted" for s in m.samples
              if s.labels.get("queue") == queue}
    assert len(labels) == receive_metrics.MAX_MSG_TYPE_LABELS + 1
    assert "other" in labels
