"""Secure messaging on top of the transport: every delivery is opened, verified and deduplicated
before a handler sees it, and every answer is sealed to the authenticated sender.

This module is shell code (it drives the transport), but holds no crypto or replay logic of its
own: it sequences ``EnvelopeCodec`` (checks 1-7) and ``ReplayGuard`` (check 8) and maps their
verdicts to explicit transport outcomes.

Verdicts on a delivery:
- envelope or replay-conflict errors: dead-letter with the error's code (never reprocessed);
- a harmless duplicate of a finished request: ack, re-sending the cached sealed answer so a
  requester that lost the first answer still gets one;
- a duplicate another worker is processing right now: wait for its lease (bounded), then decide
  again; the message is not acked blindly, because that worker may die;
- a replay store that is down or a handler bug: requeue; the queue's delivery limit bounds it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope import OpenedMessage
from broker_adapter.envelope_errors import EnvelopeError
from broker_adapter.errors import BrokerAdapterError, RequestTimeoutError, TransportError
from broker_adapter.replay import (
    Claim,
    ClaimOutcome,
    ClaimRequest,
    ReplayGuard,
    ReplayStoreError,
)
from broker_adapter.transport.consumer import Consumer
from broker_adapter.transport.delivery import (
    Ack,
    DeadLetter,
    Delivery,
    Outcome,
    Requeue,
    outcome_for_error,
)
from broker_adapter.transport.publisher import OutgoingMessage, Publisher
from broker_adapter.turn_batch import TurnBatcher

log = logging.getLogger("broker_adapter.secure")

DUPLICATES = Counter(
    "akma_secure_duplicates_total",
    "Deliveries recognised as duplicates by the replay guard, by kind.",
    ["queue", "kind"],
)
ACCEPTED = Counter(
    "akma_secure_accepted_total",
    "Deliveries that passed every envelope and replay check, by queue and message type.",
    ["queue", "msg_type"],
)

UNMATCHED_ANSWERS = Counter(
    "akma_secure_unmatched_answers_total",
    "Verified answers that matched no waiting request (late, repeated or replayed): acked, "
    "dropped.",
    ["queue"],
)


@functools.lru_cache(maxsize=256)
def _accepted_counter(queue: str, msg_type: str) -> Any:
    # ``labels()`` hashes and locks on every call, a measurable share of the per-message work
    # of a busy consumer. Message types are checked against the envelope's grammar and there
    # are few queues, so the cache stays small (and is bounded anyway).
    return ACCEPTED.labels(queue=queue, msg_type=msg_type)


# How long one delivery may wait for another worker's lease before it is requeued instead.
_MAX_LEASE_WAIT_S = 5.0
# How long one delivery retries an unavailable replay store before it is requeued instead.
_MAX_STORE_WAIT_S = 5.0


@dataclass(frozen=True)
class Reply:
    """What a request handler answers; it is sealed to the request's authenticated sender."""

    msg_type: str
    body: bytes


RequestHandler = Callable[[OpenedMessage], Awaitable[Reply | None]]
# Accepted messages of a batch with their claims -> one outcome each, in order.
BatchProcess = Callable[[list[tuple[OpenedMessage, Claim]]], Awaitable[list[Outcome]]]
NotificationHandler = Callable[[OpenedMessage], Awaitable[None]]


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


@dataclass(slots=True)
class _OpenJob:
    delivery: Delivery
    # Claim it (check 8) right after opening, on the same thread, if the batch goes there.
    claim: bool


@dataclass(slots=True)
class _Opened:
    opened: OpenedMessage
    # For a job that asked for it and was opened on the thread: its ``Claim``, the exception
    # ``claim`` would have raised for it alone, or the ``ReplayStoreError`` of the whole round.
    # None: not claimed yet.
    claim: Claim | Exception | None = None


class SecureEndpoint:
    """One party's secure messaging: sealing, publishing, and a guarded receive path."""

    def __init__(
        self,
        *,
        codec: EnvelopeCodec,
        guard: ReplayGuard,
        publisher: Publisher,
        open_executor: Executor | None = None,
        open_executor_min_batch: int = 1,
        open_executor_max_batch: int | None = None,
        claim_on_open_thread: bool = True,
    ) -> None:
        if publisher.identity != codec.identity.name:
            raise BrokerAdapterError(
                f"broker identity {publisher.identity!r} differs from envelope identity "
                f"{codec.identity.name!r}"
            )
        self.codec = codec
        self.guard = guard
        self.publisher = publisher
        # Optional: run checks 1-7 on this executor instead of the event loop. ECDSA
        # verification and AES-GCM release the GIL, so on a machine with a spare core the loop
        # keeps moving frames and replay claims meanwhile. It must have ONE worker: the codec's
        # epoch-key cache is not made for concurrent opens. See docs/benchmarks.md for when
        # it pays (the hand-off itself costs tens of microseconds).
        self._open_executor = open_executor
        # Batches smaller than this are opened on the loop after all: for a lone request the
        # hand-off and the thread's wake-up cost more latency than the verification it moves.
        self._open_executor_min_batch = max(1, open_executor_min_batch)
        # Claims of a batch opened on the executor are made there too, if the store can.
        self._claim_on_open_thread = claim_on_open_thread and guard.claims_in_thread
        # Larger batches go in slices, so that the loop works on one while the thread opens
        # the next (see SecuritySettings.open_thread_max_batch).
        self._open_batches: TurnBatcher[_OpenJob, _Opened] | None = (
            # Not a coded error on purpose: a dead executor says nothing about the message, so
            # the consumer requeues it (a coded error would dead-letter it).
            TurnBatcher(self._open_batch,
                        lambda exc: RuntimeError(f"envelope executor failed: {exc!r}"),
                        max_batch=open_executor_max_batch)
            if open_executor is not None else None
        )

    @property
    def identity(self) -> str:
        return self.codec.identity.name

    # ---- sending --------------------------------------------------------------------------

    def seal(
        self, recipient: str, msg_type: str, body: bytes, correlation_id: bytes | None = None
    ) -> tuple[bytes, bytes]:
        """Seal to ``recipient``; returns (envelope bytes, message id)."""
        sealed = self.codec.encode(
            recipient=recipient, msg_type=msg_type, body=body, correlation_id=correlation_id
        )
        return sealed.data, sealed.msg_id

    async def publish_sealed(
        self,
        exchange: str,
        routing_key: str,
        data: bytes,
        msg_id: bytes,
        *,
        msg_type: str,
        correlation_id: bytes | None = None,
        expiration_s: float | None = None,
    ) -> None:
        """Publish already sealed bytes. Retrying with the same bytes is what makes a resend a
        harmless duplicate for the receiver; sealing again would look like a conflict."""
        await self.publisher.publish(
            exchange,
            routing_key,
            OutgoingMessage(
                body=data,
                # AMQP properties are routing hints for operators; the signed inner message is
                # what the receiver trusts.
                message_id=msg_id.hex(),
                correlation_id=_hex(correlation_id),
                msg_type=msg_type,
                expiration_s=expiration_s,
            ),
        )

    async def send(
        self,
        exchange: str,
        routing_key: str,
        recipient: str,
        msg_type: str,
        body: bytes,
        *,
        correlation_id: bytes | None = None,
    ) -> bytes:
        """Seal and publish one message; returns its message id."""
        data, msg_id = self.seal(recipient, msg_type, body, correlation_id)
        await self.publish_sealed(
            exchange, routing_key, data, msg_id, msg_type=msg_type, correlation_id=correlation_id
        )
        return msg_id

    # ---- receiving ------------------------------------------------------------------------

    def open(self, delivery: Delivery) -> OpenedMessage:
        """Checks 1-7; the broker-validated ``user_id`` is mandatory and bound to the sender."""
        if not delivery.user_id:
            raise _MissingUserId()
        return self.codec.decode(delivery.body, broker_user_id=delivery.user_id)

    async def open_async(self, delivery: Delivery) -> OpenedMessage:
        """``open`` on the configured executor, or inline on the event loop.

        With an executor, the deliveries of one loop turn go to it as ONE batch: a hand-off per
        message cost more than the verification it moved (docs/benchmarks.md)."""
        if self._open_batches is None:
            return self.open(delivery)
        return (await self._open_batches.submit(_OpenJob(delivery, False))).opened

    async def open_many(self, deliveries: list[Delivery]) -> list[OpenedMessage | Exception]:
        """Checks 1-7 for a batch: each answer is the opened message or its exception.

        With an executor, the batch joins whatever else waits for the envelope thread, so
        that batches grow while the thread is busy instead of queueing one by one."""
        if self._open_batches is None:
            return self._open_all(deliveries)
        results = await self._open_batches.submit_many([_OpenJob(d, False) for d in deliveries])
        return [r if isinstance(r, Exception) else r.opened for r in results]

    async def _open_and_claim_many(self, deliveries: list[Delivery]) -> list[_Opened | Exception]:
        """Checks 1-7 for a batch and, where the batch goes to the envelope thread and the
        replay store can claim from a thread, check 8 there too: one hand-off for both, and
        the loop runs none of the claim statements (docs/benchmarks.md, item 17)."""
        if self._open_batches is None:
            return self._open_unclaimed(deliveries)
        claim = self._claim_on_open_thread
        return await self._open_batches.submit_many([_OpenJob(d, claim) for d in deliveries])

    async def _open_batch(self, jobs: list[_OpenJob]) -> list[_Opened | Exception]:
        """A batch on the executor, or inline (and unclaimed) if there are too few."""
        if len(jobs) < self._open_executor_min_batch:
            return self._open_unclaimed([job.delivery for job in jobs])
        return await asyncio.get_running_loop().run_in_executor(
            self._open_executor, self._open_jobs, jobs
        )

    def _open_unclaimed(self, deliveries: list[Delivery]) -> list[_Opened | Exception]:
        return [r if isinstance(r, Exception) else _Opened(r) for r in self._open_all(deliveries)]

    def _open_jobs(self, jobs: list[_OpenJob]) -> list[_Opened | Exception]:
        """On the envelope thread: open every job, then claim those that asked, in one round."""
        out: list[_Opened | Exception] = []
        to_claim: list[_Opened] = []
        for job in jobs:
            try:
                result = _Opened(self.open(job.delivery))
            except Exception as exc:  # noqa: BLE001 - each caller gets its own verdict
                out.append(exc)
                continue
            out.append(result)
            if job.claim:
                to_claim.append(result)
        if to_claim:
            claims: list[Claim | Exception]
            try:
                claims = self.guard.claim_many_sync([
                    ClaimRequest(r.opened.sender, r.opened.msg_id, r.opened.digest,
                                 r.opened.timestamp_ms)
                    for r in to_claim
                ])
            except ReplayStoreError as exc:
                claims = [exc] * len(to_claim)
            for result, claim in zip(to_claim, claims, strict=True):
                result.claim = claim
        return out

    def _open_all(self, deliveries: list[Delivery]) -> list[OpenedMessage | Exception]:
        out: list[OpenedMessage | Exception] = []
        for delivery in deliveries:
            try:
                out.append(self.open(delivery))
            except Exception as exc:  # noqa: BLE001 - each caller gets its own verdict
                out.append(exc)
        return out

    async def claim(self, opened: OpenedMessage) -> Claim:
        """Check 8 with bounded waiting for a busy store or another worker's lease."""
        loop = asyncio.get_running_loop()
        store_deadline = loop.time() + _MAX_STORE_WAIT_S
        lease_deadline = loop.time() + _MAX_LEASE_WAIT_S
        while True:
            try:
                claim = await self.guard.claim(
                    opened.sender, opened.msg_id, opened.digest, opened.timestamp_ms
                )
            except ReplayStoreError:
                if loop.time() > store_deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            if claim.outcome is not ClaimOutcome.DUPLICATE_IN_PROGRESS:
                return claim
            if loop.time() > lease_deadline:
                return claim
            wait_ms = claim.retry_after_ms if claim.retry_after_ms is not None else 100
            await asyncio.sleep(min(max(wait_ms, 10), 1000) / 1000)

    async def guarded(
        self,
        delivery: Delivery,
        process: Callable[[OpenedMessage, Claim], Awaitable[Outcome]],
        on_duplicate: Callable[[OpenedMessage, Claim], Awaitable[None]] | None = None,
    ) -> Outcome:
        """Open, claim, then run ``process``; map every verdict to a transport outcome."""
        try:
            opened = await self.open_async(delivery)
        except EnvelopeError as exc:
            # Includes stale and future timestamps and a missing user id: permanent verdicts.
            return DeadLetter(exc.code, exc.detail)
        return await self.guarded_opened(delivery, opened, process, on_duplicate)

    async def guarded_opened(
        self,
        delivery: Delivery,
        opened: OpenedMessage,
        process: Callable[[OpenedMessage, Claim], Awaitable[Outcome]],
        on_duplicate: Callable[[OpenedMessage, Claim], Awaitable[None]] | None = None,
    ) -> Outcome:
        """``guarded`` for a delivery that already passed checks 1-7 (``opened``)."""
        try:
            claim = await self.claim(opened)
        except EnvelopeError as exc:
            # A replay conflict: permanent.
            return DeadLetter(exc.code, exc.detail)
        except ReplayStoreError as exc:
            return Requeue(f"replay store unavailable: {exc.detail}")
        if claim.outcome is ClaimOutcome.DUPLICATE_DONE:
            return await self._duplicate_done(delivery, opened, claim, on_duplicate)
        if claim.outcome is ClaimOutcome.DUPLICATE_IN_PROGRESS:
            DUPLICATES.labels(queue=delivery.queue, kind="in_progress").inc()
            return Requeue("another worker holds this message")
        self._accepted(delivery, opened, claim)
        try:
            return await process(opened, claim)
        except asyncio.CancelledError:
            await self.release_quietly(claim)
            raise
        except Exception:
            # A bug or a transient fault in the handler: free the claim so the redelivery
            # (bounded by the delivery limit) can process it again.
            await self.release_quietly(claim)
            raise

    async def guarded_batch(
        self,
        deliveries: list[Delivery],
        process: BatchProcess,
        on_duplicate: Callable[[OpenedMessage, Claim], Awaitable[None]] | None = None,
    ) -> list[Outcome]:
        """``guarded`` for many deliveries: one open batch, one claim round, one ``process``.

        The verdicts are those of ``guarded`` for each delivery alone. ``process`` gets the
        accepted (opened, claim) pairs and answers an outcome for each; it completes or
        releases their claims itself. A claim that must wait (another worker's lease, a store
        that is down) takes the single path with its bounded waiting, so a rare slow message
        does not hold back the batch's claim round.
        """
        outcomes: list[Outcome | None] = [None] * len(deliveries)
        # Claimed already where the batch was opened on the envelope thread.
        claimed: list[tuple[int, OpenedMessage, Claim | Exception]] = []
        pending: list[tuple[int, OpenedMessage]] = []
        for i, result in enumerate(await self._open_and_claim_many(deliveries)):
            if isinstance(result, Exception):
                outcomes[i] = open_failure(deliveries[i], result)
            elif result.claim is not None:
                claimed.append((i, result.opened, result.claim))
            else:
                pending.append((i, result.opened))
        if pending:
            try:
                claims: list[Claim | Exception] = await self.guard.claim_many(
                    [ClaimRequest(o.sender, o.msg_id, o.digest, o.timestamp_ms)
                     for _, o in pending]
                )
            except ReplayStoreError as exc:
                claims = [exc] * len(pending)
            claimed += [(i, o, c) for (i, o), c in zip(pending, claims, strict=True)]
        accepted: list[tuple[int, OpenedMessage, Claim]] = []
        duplicates: list[tuple[int, OpenedMessage, Claim]] = []
        waiting: list[tuple[int, OpenedMessage]] = []
        for i, opened, claim in claimed:
            if isinstance(claim, ReplayStoreError):
                waiting.append((i, opened))
            elif isinstance(claim, Exception):
                outcomes[i] = outcome_for_error(claim)
            elif claim.outcome is ClaimOutcome.DUPLICATE_IN_PROGRESS:
                waiting.append((i, opened))
            elif claim.outcome is ClaimOutcome.DUPLICATE_DONE:
                duplicates.append((i, opened, claim))
            else:
                self._accepted(deliveries[i], opened, claim)
                accepted.append((i, opened, claim))

        async def one_alone(opened: OpenedMessage, claim: Claim) -> Outcome:
            return (await process([(opened, claim)]))[0]

        async def run_accepted() -> None:
            if not accepted:
                return
            try:
                done = await process([(opened, claim) for _, opened, claim in accepted])
            except BaseException as exc:
                # ``process`` answers per message; raising means a bug or a cancellation:
                # free every claim so the redeliveries can process them (as ``guarded``).
                await asyncio.gather(*(self.release_quietly(c) for _, _, c in accepted))
                if not isinstance(exc, Exception):
                    raise
                log.exception("batch processing failed", extra={"queue": deliveries[0].queue})
                done = [outcome_for_error(exc)] * len(accepted)
            for (i, _, _), outcome in zip(accepted, done, strict=True):
                outcomes[i] = outcome

        async def alone(i: int, step: Awaitable[Outcome]) -> None:
            # One message's own step, isolated: whatever it raises is that message's verdict.
            try:
                outcomes[i] = await step
            except Exception as exc:
                log.exception("handling failed", extra={"queue": deliveries[i].queue})
                outcomes[i] = outcome_for_error(exc)

        # Side by side, not one after the other: a lease wait takes up to seconds, and
        # ``on_duplicate`` may publish a cached answer and wait for its confirm (a replay flood
        # brings many per batch).
        await asyncio.gather(
            run_accepted(),
            *(alone(i, self.guarded_opened(deliveries[i], o, one_alone, on_duplicate))
              for i, o in waiting),
            *(alone(i, self._duplicate_done(deliveries[i], o, c, on_duplicate))
              for i, o, c in duplicates),
        )
        return [o if o is not None else Requeue("no outcome") for o in outcomes]

    async def _duplicate_done(
        self,
        delivery: Delivery,
        opened: OpenedMessage,
        claim: Claim,
        on_duplicate: Callable[[OpenedMessage, Claim], Awaitable[None]] | None,
    ) -> Outcome:
        DUPLICATES.labels(queue=delivery.queue, kind="done").inc()
        # A redelivery after a crash looks the same as a replay by the sender, so this is
        # INFO, not a warning; the line lets an operator trace either back to its message.
        log.info(
            "duplicate delivery acked",
            extra={"queue": delivery.queue, "sender": opened.sender,
                   "msg_id": opened.msg_id.hex(), "message_id": delivery.message_id},
        )
        if on_duplicate is not None:
            await on_duplicate(opened, claim)
        return Ack()

    def _accepted(self, delivery: Delivery, opened: OpenedMessage, claim: Claim) -> None:
        if claim.reclaimed:
            DUPLICATES.labels(queue=delivery.queue, kind="reclaimed").inc()
        _accepted_counter(delivery.queue, opened.msg_type).inc()

    async def release_quietly(self, claim: Claim) -> None:
        """Release after a failed handling; a store that is down lets the lease expire."""
        try:
            await self.guard.release(claim)
        except ReplayStoreError:
            log.warning("could not release claim; it expires with its lease")


def open_failure(delivery: Delivery, exc: Exception) -> Outcome:
    """The outcome of a delivery that could not be opened: an ``EnvelopeError`` is a verdict on
    the message (dead-letter with its code); anything else is our fault and is logged."""
    if not isinstance(exc, EnvelopeError):
        log.error("open failed", exc_info=exc, extra={"queue": delivery.queue})
    return outcome_for_error(exc)


class _MissingUserId(EnvelopeError):
    code = "missing_user_id"

    def __init__(self) -> None:
        super().__init__("delivery carries no broker-validated user_id")


class SecureResponder:
    """Serves requests from one queue: answer each with a sealed reply to the sender's inbox.

    Replies are addressed by the authenticated sender (the envelope's sender, which equals the
    broker-validated ``user_id``), never by a client-supplied ``reply_to``.
    """

    def __init__(
        self,
        endpoint: SecureEndpoint,
        handler: RequestHandler,
        *,
        reply_exchange: str = "akma.replies",
    ) -> None:
        self._endpoint = endpoint
        self._handler = handler
        self._reply_exchange = reply_exchange

    async def __call__(self, delivery: Delivery) -> Outcome:
        return await self._endpoint.guarded(delivery, self._process, self._resend_cached)

    async def handle_batch(self, deliveries: list[Delivery]) -> list[Outcome]:
        """A ``Consumer`` batch handler: the same verdicts as ``__call__`` for each delivery,
        with one open batch, one claim round and one completion round for all of them."""
        return await self._endpoint.guarded_batch(
            deliveries, self._process_batch, self._resend_cached)

    async def _process_batch(self, items: list[tuple[OpenedMessage, Claim]]) -> list[Outcome]:
        replies: list[Reply | None | BaseException]
        if len(items) == 1:
            # The common case at low load: no task for a lone handler.
            try:
                replies = [await self._handler(items[0][0])]
            except Exception as exc:  # noqa: BLE001 - that message's verdict, below
                replies = [exc]
        else:
            # Handlers may wait for I/O (a notification publish): they run side by side.
            replies = list(await asyncio.gather(
                *(self._handler(opened) for opened, _ in items), return_exceptions=True))
        outcomes: list[Outcome | None] = [None] * len(items)
        completions: list[tuple[int, Claim, bytes | None]] = []
        sends: list[tuple[int, OpenedMessage, bytes, bytes, str]] = []
        failed: list[Claim] = []
        for i, ((opened, claim), reply) in enumerate(zip(items, replies, strict=True)):
            if isinstance(reply, BaseException):
                if not isinstance(reply, Exception):
                    raise reply  # cancelled: the endpoint frees every claim
                if not isinstance(reply, BrokerAdapterError):
                    log.error("handler failed", exc_info=reply,
                              extra={"sender": opened.sender, "msg_id": opened.msg_id.hex()})
                failed.append(claim)
                outcomes[i] = outcome_for_error(reply)
            elif reply is None:
                completions.append((i, claim, None))
            else:
                data, msg_id = self._endpoint.seal(
                    opened.sender, reply.msg_type, reply.body, correlation_id=opened.msg_id)
                # Remembered before it is sent, as in ``_process``.
                completions.append((i, claim, data))
                sends.append((i, opened, data, msg_id, reply.msg_type))
        done = await self._endpoint.guard.complete_many([(c, d) for _, c, d in completions])
        # complete's answer (False: ownership lost to a reclaim) changes nothing, as in
        # ``_process``; an item's own store error does: its claim expires, it is redelivered.
        for (i, _, _), completed in zip(completions, done, strict=True):
            if isinstance(completed, Exception):
                outcomes[i] = outcome_for_error(completed)
        # A failed handling frees its claim so that the redelivery processes it again.
        releases = [self._endpoint.release_quietly(c) for c in failed]
        publishing = [(i, self._publish_reply(opened, data, msg_id, msg_type))
                      for i, opened, data, msg_id, msg_type in sends if outcomes[i] is None]
        results = await asyncio.gather(*releases, *(p for _, p in publishing),
                                       return_exceptions=True)
        for (i, _), result in zip(publishing, results[len(releases):], strict=True):
            if isinstance(result, TransportError):
                outcomes[i] = Requeue(f"reply publish failed: {result.code}")
            elif isinstance(result, BaseException):
                raise result
        return [o if o is not None else Ack() for o in outcomes]

    async def _process(self, opened: OpenedMessage, claim: Claim) -> Outcome:
        reply = await self._handler(opened)
        if reply is None:
            await self._endpoint.guard.complete(claim)
            return Ack()
        data, msg_id = self._endpoint.seal(
            opened.sender, reply.msg_type, reply.body, correlation_id=opened.msg_id
        )
        # Remember the sealed answer before sending it: if the publish fails, the redelivered
        # request finds it and sends the same bytes instead of deriving the answer again.
        await self._endpoint.guard.complete(claim, response=data)
        try:
            await self._publish_reply(opened, data, msg_id, reply.msg_type)
        except TransportError as exc:
            return Requeue(f"reply publish failed: {exc.code}")
        return Ack()

    async def _publish_reply(
        self, opened: OpenedMessage, data: bytes, msg_id: bytes, msg_type: str
    ) -> None:
        await self._endpoint.publish_sealed(
            self._reply_exchange,
            opened.sender,
            data,
            msg_id,
            msg_type=msg_type,
            correlation_id=opened.msg_id,
        )

    async def _resend_cached(self, opened: OpenedMessage, claim: Claim) -> None:
        if not claim.cached_response:
            return
        try:
            await self._endpoint.publisher.publish(
                self._reply_exchange,
                opened.sender,
                OutgoingMessage(
                    body=claim.cached_response,
                    message_id=secrets.token_hex(16),
                    correlation_id=opened.msg_id.hex(),
                    msg_type="resent",
                ),
            )
        except TransportError:
            log.warning("could not re-send cached reply", exc_info=True)


@dataclass
class _Pending:
    future: asyncio.Future[OpenedMessage]
    peer: str


class SecureRequester:
    """Sends sealed requests and matches sealed answers by their *signed* correlation id.

    Its inbox also carries unsolicited messages (notifications), which go to
    ``on_notification`` after the same checks. Retries resend the same sealed bytes, so the
    responder's replay guard answers them from its cache instead of processing twice.
    """

    def __init__(
        self,
        endpoint: SecureEndpoint,
        connection: object,
        inbox_queue: str,
        *,
        request_exchange: str = "akma.requests",
        on_notification: NotificationHandler | None = None,
        prefetch: int = 128,
    ) -> None:
        self._endpoint = endpoint
        self._request_exchange = request_exchange
        self._on_notification = on_notification
        self._pending: dict[bytes, _Pending] = {}
        # Batch mode: the answers that arrive in one loop turn are opened together.
        self._consumer = Consumer(
            connection,  # type: ignore[arg-type]
            inbox_queue,
            publisher=endpoint.publisher,
            prefetch=prefetch,
            batch_handler=self._on_inbox_batch,
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.cancel()

    async def _on_inbox_batch(self, deliveries: list[Delivery]) -> list[Outcome]:
        """The inbox's deliveries of one loop turn: one open batch, then each in turn (an
        answer only wakes its caller; a notification waits for its replay claim)."""
        outcomes: list[Outcome] = []
        for delivery, opened in zip(
            deliveries, await self._endpoint.open_many(deliveries), strict=True
        ):
            if isinstance(opened, Exception):
                outcomes.append(open_failure(delivery, opened))
                continue
            try:
                outcomes.append(await self._route(delivery, opened))
            except Exception as exc:
                log.exception("inbox handling failed", extra={"queue": delivery.queue})
                outcomes.append(outcome_for_error(exc))
        return outcomes

    async def _route(self, delivery: Delivery, opened: OpenedMessage) -> Outcome:
        # Answers are deduplicated by the table of pending requests, not by the replay store:
        # an answer is accepted only while its request (a random 128-bit id, named in the
        # signed correlation id) is waiting, and only once. A replayed or redelivered answer
        # finds its request answered or gone and is dropped, so the store's two writes per
        # answer would protect nothing more; they were a tenth of the caller's CPU per request
        # (docs/benchmarks.md). Everything else (notifications) goes through the store.
        if opened.correlation_id is None:
            return await self._endpoint.guarded_opened(delivery, opened, self._notify)
        pending = self._pending.get(opened.correlation_id)
        if pending is None or pending.future.done():
            UNMATCHED_ANSWERS.labels(queue=delivery.queue).inc()
            log.info("late or repeated answer dropped",
                     extra={"correlation_id": opened.correlation_id.hex(),
                            "sender": opened.sender, "msg_id": opened.msg_id.hex()})
            return Ack()
        if opened.sender != pending.peer:
            # A trusted party answered a request it was never sent: refuse it.
            return DeadLetter("unexpected_responder", f"answer from {opened.sender}")
        _accepted_counter(delivery.queue, opened.msg_type).inc()
        pending.future.set_result(opened)
        return Ack()

    async def _notify(self, opened: OpenedMessage, claim: Claim) -> Outcome:
        if self._on_notification is not None:
            await self._on_notification(opened)
        await self._endpoint.guard.complete(claim)
        return Ack()

    async def request(
        self,
        peer: str,
        routing_key: str,
        msg_type: str,
        body: bytes,
        *,
        timeout_s: float = 5.0,
        attempts: int = 3,
    ) -> OpenedMessage:
        """Send one request and return the verified answer, resending on timeout."""
        data, msg_id = self._endpoint.seal(peer, msg_type, body)
        future: asyncio.Future[OpenedMessage] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = _Pending(future, peer)
        try:
            for attempt in range(1, attempts + 1):
                try:
                    await self._endpoint.publish_sealed(
                        self._request_exchange,
                        routing_key,
                        data,
                        msg_id,
                        msg_type=msg_type,
                        expiration_s=timeout_s * attempts,
                    )
                except TransportError:
                    if attempt == attempts:
                        raise
                    await asyncio.sleep(min(0.2 * attempt, 1.0))
                    continue
                try:
                    return await asyncio.wait_for(asyncio.shield(future), timeout=timeout_s)
                except TimeoutError:
                    log.warning("request %s timed out (attempt %d)", msg_id.hex(), attempt)
            raise RequestTimeoutError(f"no answer to {msg_type} after {attempts} attempts")
        finally:
            self._pending.pop(msg_id, None)
