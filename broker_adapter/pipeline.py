"""The one receive path: a loop turn's deliveries go through the stages together, and each
message's outcome is ``verdict.decide`` of its own results.

Stages, with where they run:
1. open (checks 1-7) and claim (check 8), as one job on the ``EnvelopeWorker``;
   claims another worker holds, or a replay store that is down, are retried together with a
   bounded wait while the rest of the batch is handled;
2. the handlers, side by side on the loop;
3. seal the replies, complete the claims and release those of failed messages, on the loop (the
   envelope thread is the bottleneck under load; this work holds the GIL wherever it runs);
4. publish the replies (and re-send cached answers of finished duplicates), side by side.
Stages 1 and 3 of concurrent batches are merged by a ``TurnBatcher``: one store round for all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker_adapter.envelope import OpenedMessage
from broker_adapter.errors import Fault, code_of
from broker_adapter.receive_metrics import count, count_local_fault
from broker_adapter.replay import Claim, ClaimOutcome, ClaimRequest, ReplayStoreError
from broker_adapter.transport.delivery import Delivery
from broker_adapter.turns import TurnBatcher
from broker_adapter.verdict import (
    PENDING,
    SKIPPED,
    Outcome,
    Progress,
    Reply,
    SealedReply,
    Stage,
    Verdict,
    decide,
    failed,
)

if TYPE_CHECKING:
    from broker_adapter.secure import SecureEndpoint

log = logging.getLogger("broker_adapter.pipeline")

Handler = Callable[[OpenedMessage], Awaitable[Reply | None]]

# A stage's batch across concurrent consumer batches; a submission is never split.
MAX_STAGE_BATCH = 64
# How long one message waits for another worker's lease, or for the replay store, before it is
# requeued instead.
MAX_CLAIM_WAIT_S = 5.0
_STORE_RETRY_S = 0.2


def _always(_: OpenedMessage) -> bool:
    return True


@dataclass(slots=True)
class _Job:
    delivery: Delivery
    progress: Progress = field(default_factory=Progress)
    # ``decide(progress)``, kept current by ``advance`` after every stage.
    step: Stage | Verdict = Stage.OPEN
    # The claim of a failed message was released or recorded as done.
    claim_settled: bool = False

    def advance(self) -> None:
        self.step = decide(self.progress)

    @property
    def opened(self) -> OpenedMessage:
        if not isinstance(self.progress.opened, OpenedMessage):
            raise TypeError("the message is not opened yet")
        return self.progress.opened

    @property
    def claim(self) -> Claim:
        if not isinstance(self.progress.claim, Claim):
            raise TypeError("the message is not claimed yet")
        return self.progress.claim


def _must_wait(job: _Job) -> bool:
    claim = job.progress.claim
    return isinstance(claim, ReplayStoreError) or (
        isinstance(claim, Claim) and claim.outcome is ClaimOutcome.DUPLICATE_IN_PROGRESS)


def _wait_s(claim: object) -> float:
    if isinstance(claim, Claim) and claim.retry_after_ms is not None:
        return min(max(claim.retry_after_ms, 10), 1000) / 1000
    return _STORE_RETRY_S


def _owns_claim(job: _Job) -> bool:
    claim = job.progress.claim
    return (isinstance(claim, Claim) and claim.outcome is ClaimOutcome.PROCESS
            and not job.claim_settled and job.progress.completed is PENDING)


class SecureReceiver:
    """A consumer's batch handler: every delivery opened, verified, deduplicated and handled.

    ``needs_claim`` says which opened messages go through the replay store (all, by default);
    ``reply_exchange`` is where replies go, routed by the authenticated sender's name.
    """

    def __init__(
        self,
        endpoint: SecureEndpoint,
        handler: Handler,
        *,
        reply_exchange: str | None = None,
        needs_claim: Callable[[OpenedMessage], bool] = _always,
    ) -> None:
        self._endpoint = endpoint
        self._handler = handler
        self._reply_exchange = reply_exchange
        self._needs_claim = needs_claim
        self._first = TurnBatcher(self._open_and_claim, max_batch=MAX_STAGE_BATCH)
        self._second = TurnBatcher(self._seal_and_settle, max_batch=MAX_STAGE_BATCH)

    async def __call__(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        jobs = [_Job(d) for d in deliveries]
        try:
            await self._stage(self._first, jobs)
            for job in jobs:
                job.advance()
            waiting = [job for job in jobs if _must_wait(job)]
            await asyncio.gather(self._finish([job for job in jobs if not _must_wait(job)]),
                                 self._wait_then_finish(waiting))
        except BaseException:
            await asyncio.shield(self._release(jobs))
            raise
        return [self._settle(job) for job in jobs]

    # ---- stages ---------------------------------------------------------------------------

    async def _stage(self, batcher: TurnBatcher[_Job, None], jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            await batcher.submit(jobs)
        except Exception as exc:  # noqa: BLE001 - the worker itself failed: ours, for each
            log.error("envelope worker failed", exc_info=exc)
            for job in jobs:
                _record_failure(job, exc)

    async def _open_and_claim(self, jobs: list[_Job]) -> list[None | Exception]:
        return await self._endpoint.worker.run(lambda: self._open_and_claim_now(jobs), len(jobs))

    def _open_and_claim_now(self, jobs: list[_Job]) -> list[None | Exception]:
        to_claim: list[_Job] = []
        for job in jobs:
            try:
                job.progress.opened = self._endpoint.open(job.delivery)
            except Exception as exc:  # noqa: BLE001 - that message's verdict
                job.progress.opened = exc
                continue
            if self._needs_claim(job.opened):
                to_claim.append(job)
            else:
                job.progress.claim = SKIPPED
        self._claim_now(to_claim)
        return [None] * len(jobs)

    def _claim_now(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        claims: list[Claim | Exception]
        try:
            claims = self._endpoint.guard.claim([
                ClaimRequest(j.opened.sender, j.opened.msg_id, j.opened.digest,
                             j.opened.timestamp_ms) for j in jobs])
        except Exception as exc:  # noqa: BLE001 - the round failed: ours, for each of them
            claims = [exc] * len(jobs)
        for job, claim in zip(jobs, claims, strict=True):
            job.progress.claim = claim

    async def _wait_then_finish(self, waiting: list[_Job]) -> None:
        """Claim again, one store round for all, until each message's claim is decided or the
        bounded wait is over; each goes on as soon as its own claim is decided."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MAX_CLAIM_WAIT_S
        going: list[asyncio.Task[None]] = []
        while waiting and loop.time() < deadline:
            await asyncio.sleep(min(_wait_s(job.progress.claim) for job in waiting))
            self._claim_now(waiting)
            decided = [job for job in waiting if not _must_wait(job)]
            waiting = [job for job in waiting if _must_wait(job)]
            if decided:
                for job in decided:
                    job.advance()
                going.append(asyncio.ensure_future(self._finish(decided)))
        for job in waiting:
            job.advance()
        await asyncio.gather(self._finish(waiting), *going)

    async def _finish(self, jobs: list[_Job]) -> None:
        """Handle, seal, settle and publish ``jobs``; a fault of this module is each one's own
        local failure, never a reason to abandon a neighbour's claim."""
        try:
            await self._handle([job for job in jobs if job.step is Stage.HANDLE])
            await self._stage(self._second, [job for job in jobs if _needs_second(job)])
            await self._publish(jobs)
        except Exception as exc:  # noqa: BLE001 - recorded on each message not finished
            log.error("receive path failed", exc_info=exc)
            for job in jobs:
                if isinstance(job.step, Stage):
                    _record_failure(job, exc)
            self._settle_claims_now(jobs)

    async def _handle(self, jobs: list[_Job]) -> None:
        if len(jobs) == 1:
            # The common case at low load: no task for a lone handler.
            job = jobs[0]
            try:
                job.progress.reply = await self._handler(job.opened)
            except Exception as exc:  # noqa: BLE001 - that message's verdict
                job.progress.reply = exc
            job.advance()
            return
        # Handlers may wait for I/O (a notification publish): they run side by side.
        replies = await asyncio.gather(*(self._handler(job.opened) for job in jobs),
                                       return_exceptions=True)
        for job, reply in zip(jobs, replies, strict=True):
            if isinstance(reply, BaseException) and not isinstance(reply, Exception):
                raise reply
            job.progress.reply = reply
            job.advance()

    async def _seal_and_settle(self, jobs: list[_Job]) -> list[None | Exception]:
        # On the loop: the envelope thread is the bottleneck under load, and this is mostly
        # Python and store work, which holds the GIL wherever it runs.
        return self._seal_and_settle_now(jobs)

    def _seal_and_settle_now(self, jobs: list[_Job]) -> list[None | Exception]:
        for job in jobs:
            if job.step is Stage.SEAL:
                job.progress.sealed = self._seal(job)
                job.advance()
        # The sealed answer is remembered with the completion, before it is sent: a redelivered
        # request then gets the same bytes instead of a second derivation.
        completing = [job for job in jobs if job.step is Stage.COMPLETE]
        done = self._store_round(self._endpoint.guard.complete, [
            (job.claim, _sealed_data(job)) for job in completing])
        for job, result in zip(completing, done, strict=True):
            job.progress.completed = result
            job.advance()
        self._settle_claims_now(jobs)
        return [None] * len(jobs)

    def _settle_claims_now(self, jobs: list[_Job]) -> None:
        """Release (our fault) or record as done without an answer (the message's fault) the
        claims of messages that failed after claiming."""
        self._release_now([job for job in jobs if _settles(job, "release")])
        finishing = [job for job in jobs if _settles(job, "finish")]
        for job, result in zip(finishing, self._store_round(self._endpoint.guard.complete, [
                (job.claim, None) for job in finishing]), strict=True):
            job.claim_settled = True
            if isinstance(result, Exception):
                log.warning("could not record a refused message as done",
                            extra={"reason": code_of(result)})

    def _seal(self, job: _Job) -> SealedReply | Exception:
        reply = job.progress.reply
        if not isinstance(reply, Reply):
            raise TypeError("sealing needs a reply")
        try:
            data, msg_id = self._endpoint.seal_now(
                job.opened.sender, reply.msg_type, reply.body, correlation_id=job.opened.msg_id)
        except Exception as exc:  # noqa: BLE001 - that message's verdict
            return exc
        return SealedReply(reply.msg_type, data, msg_id)

    @staticmethod
    def _store_round(call: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[Any]:
        if not items:
            return []
        try:
            return call(items)
        except ReplayStoreError as exc:
            return [exc] * len(items)

    def _release_now(self, jobs: list[_Job]) -> None:
        # A store that is down lets the claims expire with their leases instead.
        for job, result in zip(jobs, self._store_round(
                self._endpoint.guard.release, [job.claim for job in jobs]), strict=True):
            job.claim_settled = True
            if isinstance(result, Exception):
                log.warning("could not release claim; it expires with its lease",
                            extra={"reason": code_of(result)})

    async def _release(self, jobs: list[_Job]) -> None:
        """On cancellation: free the claims of messages not finished, for their redeliveries,
        once a first stage still running on the envelope thread has written them (bounded)."""
        await self._first.wait_idle(MAX_CLAIM_WAIT_S)
        owned = [job for job in jobs if _owns_claim(job)]
        if owned:
            self._release_now(owned)

    async def _publish(self, jobs: list[_Job]) -> None:
        sending = [job for job in jobs if job.step is Stage.PUBLISH]
        resending = [job for job in jobs if _verdict(job).resend_cached]
        if not sending and not resending:
            return
        results = await asyncio.gather(*(self._publish_reply(job) for job in sending),
                                       *(self._resend(job) for job in resending),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        for job, result in zip(sending, results[:len(sending)], strict=True):
            job.progress.published = result if isinstance(result, Exception) else True
            job.advance()

    async def _publish_reply(self, job: _Job) -> None:
        sealed = job.progress.sealed
        if not isinstance(sealed, SealedReply) or self._reply_exchange is None:
            raise TypeError("publishing needs a sealed reply and a reply exchange")
        await self._endpoint.publish_sealed(
            self._reply_exchange, job.opened.sender, sealed.data, sealed.msg_id,
            msg_type=sealed.msg_type, correlation_id=job.opened.msg_id)

    async def _resend(self, job: _Job) -> None:
        cached = job.claim.cached_response
        if cached is None or self._reply_exchange is None:
            return
        try:
            await self._endpoint.publish_sealed(
                self._reply_exchange, job.opened.sender, cached, None,
                msg_type="resent", correlation_id=job.opened.msg_id)
        except Exception:  # noqa: BLE001 - best effort: the requester retries anyway
            log.warning("could not re-send cached reply", exc_info=True)

    def _settle(self, job: _Job) -> Outcome:
        verdict = _verdict(job)
        queue = job.delivery.queue
        count(job.progress.claim, job.progress.opened, queue,
              lease_lost=job.progress.completed is False)
        if verdict.fault is Fault.LOCAL:
            failure = _failure(job.progress) or RuntimeError("no failure recorded")
            count_local_fault(queue, code_of(failure))
            log.error("message requeued: our own fault", exc_info=failure,
                      extra={"queue": queue, "message_id": job.delivery.message_id})
        return verdict.outcome


def _verdict(job: _Job) -> Verdict:
    verdict = job.step
    if isinstance(verdict, Verdict):
        return verdict
    # A stage left undone is a bug of this module; the message goes back, nothing is lost.
    return failed(RuntimeError(f"stage {verdict.value} left undone"))


def _needs_second(job: _Job) -> bool:
    return (job.step is Stage.SEAL or job.step is Stage.COMPLETE
            or _settles(job, "release") or _settles(job, "finish"))


def _settles(job: _Job, action: str) -> bool:
    step = job.step
    return (isinstance(step, Verdict) and not job.claim_settled
            and (step.release if action == "release" else step.finish))


def _sealed_data(job: _Job) -> bytes | None:
    sealed = job.progress.sealed
    return sealed.data if isinstance(sealed, SealedReply) else None


def _record_failure(job: _Job, exc: Exception) -> None:
    """Put a failure of a whole stage on the first stage the message has not passed."""
    step = decide(job.progress)
    if isinstance(step, Stage):
        setattr(job.progress, _FIELD[step], exc)
    job.advance()


def _failure(progress: Progress) -> Exception | None:
    for name in _FIELD.values():
        value = getattr(progress, name)
        if isinstance(value, Exception):
            return value
    return None


# Each stage's field in ``Progress``, in the stages' order.
_FIELD = dict(zip(Stage, ("opened", "claim", "reply", "sealed", "completed", "published"),
                  strict=True))
