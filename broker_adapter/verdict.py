"""What happens to one received message, decided from that message's own results alone.

A message goes through up to six stages: open (checks 1-7), claim (check 8), handle, seal the
reply, complete the claim, publish the reply. ``decide`` looks at what the stages answered so far
and says either which stage runs next or the final ``Verdict``: the transport outcome (ack,
dead-letter with a reason, requeue) and what to do with the replay claim. It is pure and sees only
one message, so no message's failure can change another message's verdict.

Faults are mapped to outcomes in one place, ``outcome_for``: the message's or its sender's fault
is dead-lettered with its code; our own fault (a key, a store, the link, a bug) is requeued, and
the queue's delivery limit bounds the retries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from broker_adapter.envelope import OpenedMessage
from broker_adapter.errors import Fault, code_of, fault_of
from broker_adapter.replay import Claim, ClaimOutcome

_MAX_DETAIL = 200


@dataclass(frozen=True, slots=True)
class Ack:
    """Processed (or a harmless duplicate): remove the message."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Permanently unacceptable: move it to the dead-letter queue with a coded reason."""

    code: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Requeue:
    """Our own transient failure: deliver again later; the delivery limit bounds the loop."""

    detail: str = ""


Outcome = Ack | DeadLetter | Requeue


@dataclass(frozen=True, slots=True)
class Reply:
    """What a request handler answers; it is sealed to the request's authenticated sender."""

    msg_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class SealedReply:
    msg_type: str
    data: bytes
    msg_id: bytes


class Stage(enum.Enum):
    OPEN = "open"
    CLAIM = "claim"
    HANDLE = "handle"
    SEAL = "seal"
    COMPLETE = "complete"
    PUBLISH = "publish"


class Mark(enum.Enum):
    """A stage's result before it has one, or for a stage this message does not need."""

    PENDING = "pending"
    SKIPPED = "skipped"


PENDING = Mark.PENDING
SKIPPED = Mark.SKIPPED


@dataclass(slots=True)
class Progress:
    """One message's stage results so far; an exception is that stage's failure."""

    opened: OpenedMessage | Exception | Mark = PENDING
    # SKIPPED: a message that needs no replay claim (an answer matched to its request).
    claim: Claim | Exception | Mark = PENDING
    # None: handled, nothing to answer.
    reply: Reply | None | Exception | Mark = PENDING
    sealed: SealedReply | Exception | Mark = PENDING
    completed: bool | Exception | Mark = PENDING
    published: bool | Exception | Mark = PENDING


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    # Free the replay claim so that a redelivery may process the message again (our fault).
    release: bool = False
    # Record the claim as done without an answer: the handler ran, and the sender's retries
    # or replays of a message it spoilt must not run it again (the message's fault).
    finish: bool = False
    # A finished duplicate: send its cached answer again (its requester may have lost it).
    resend_cached: bool = False
    # Whose fault a failure was (None: no failure); a local fault is counted and alerted.
    fault: Fault | None = None


def outcome_for(exc: BaseException) -> Outcome:
    """The one mapping from an error to an outcome, by whose fault it is."""
    if fault_of(exc) is Fault.REMOTE:
        return DeadLetter(code_of(exc), str(getattr(exc, "detail", "")))
    return Requeue(f"{code_of(exc)}: {type(exc).__name__}: {exc}"[:_MAX_DETAIL])


def failed(exc: BaseException, *, claimed: bool = False) -> Verdict:
    """The verdict of a failure; ``claimed``: the message holds a claim it has not finished."""
    fault = fault_of(exc)
    remote = fault is Fault.REMOTE
    return Verdict(outcome_for(exc), release=claimed and not remote,
                   finish=claimed and remote, fault=fault)


def _claimed(p: Progress) -> bool:
    return isinstance(p.claim, Claim) and p.claim.outcome is ClaimOutcome.PROCESS


def decide(p: Progress) -> Stage | Verdict:
    """The next stage to run for this message, or its final verdict."""
    if p.opened is PENDING:
        return Stage.OPEN
    if isinstance(p.opened, Exception):
        return failed(p.opened)
    before = _before_handling(p)
    if before is not None:
        return before
    if p.reply is PENDING:
        return Stage.HANDLE
    if isinstance(p.reply, Exception):
        return failed(p.reply, claimed=_claimed(p))
    return _after_handling(p)


def _before_handling(p: Progress) -> Stage | Verdict | None:
    claim = p.claim
    if claim is PENDING:
        return Stage.CLAIM
    if isinstance(claim, Exception):
        return failed(claim)
    if isinstance(claim, Claim):
        if claim.outcome is ClaimOutcome.DUPLICATE_DONE:
            return Verdict(Ack(), resend_cached=claim.cached_response is not None)
        if claim.outcome is ClaimOutcome.DUPLICATE_IN_PROGRESS:
            return Verdict(Requeue("another worker holds this message"))
    return None


def _after_handling(p: Progress) -> Stage | Verdict:
    answers = isinstance(p.reply, Reply)
    if answers:
        if p.sealed is PENDING:
            return Stage.SEAL
        if isinstance(p.sealed, Exception):
            # A reply that cannot be sealed to its requester is this message's own verdict.
            return failed(p.sealed, claimed=_claimed(p))
    return _after_sealing(p, answers)


def _after_sealing(p: Progress, answers: bool) -> Stage | Verdict:
    if _claimed(p):
        if p.completed is PENDING:
            return Stage.COMPLETE
        if isinstance(p.completed, Exception):
            # The store is ours and down: the claim's lease runs out, a redelivery reclaims it.
            return failed(p.completed)
    if answers:
        if p.published is PENDING:
            return Stage.PUBLISH
        if isinstance(p.published, Exception):
            # The answer is remembered: the redelivery is a duplicate that re-sends it.
            return failed(p.published)
    return Verdict(Ack())
