"""What the receive path counts: accepted messages, duplicates by kind, our own faults."""

from __future__ import annotations

import functools
import logging
from typing import Any

from prometheus_client import Counter

from broker_adapter.envelope import OpenedMessage
from broker_adapter.replay import Claim, ClaimOutcome
from broker_adapter.verdict import SKIPPED

log = logging.getLogger("broker_adapter.pipeline")

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
LOCAL_FAULTS = Counter(
    "akma_secure_local_faults_total",
    "Deliveries requeued because of a fault of ours (own key, replay store, link, bug), by code.",
    ["queue", "code"],
)


# A trusted but abusive sender may sign any message type: past this many per queue, the rest are
# counted as "other", so the metric's series stay bounded.
MAX_MSG_TYPE_LABELS = 64
_msg_types: dict[str, set[str]] = {}


@functools.lru_cache(maxsize=256)
def _accepted_counter(queue: str, msg_type: str) -> Any:
    # ``labels()`` hashes and locks on every call, so children are looked up once.
    seen = _msg_types.setdefault(queue, set())
    if msg_type not in seen:
        if len(seen) >= MAX_MSG_TYPE_LABELS:
            msg_type = "other"
        else:
            seen.add(msg_type)
    return ACCEPTED.labels(queue=queue, msg_type=msg_type)


def count_local_fault(queue: str, code: str) -> None:
    LOCAL_FAULTS.labels(queue=queue, code=code).inc()


def count(claim: object, opened: object, queue: str, *, lease_lost: bool = False) -> None:
    """Count one settled message by what its claim said."""
    if lease_lost:
        # Handled after another worker had reclaimed it: both ran the (idempotent) handler.
        DUPLICATES.labels(queue=queue, kind="lease_lost").inc()
        log.warning("claim lost to a reclaim before completion; handled twice",
                    extra={"queue": queue})
    if isinstance(claim, Claim):
        if claim.outcome is ClaimOutcome.DUPLICATE_DONE:
            DUPLICATES.labels(queue=queue, kind="done").inc()
            # A redelivery after a crash looks the same as a replay, so this is INFO.
            log.info("duplicate delivery acked",
                     extra={"queue": queue, "sender": claim.sender,
                            "msg_id": claim.msg_id.hex()})
            return
        if claim.outcome is ClaimOutcome.DUPLICATE_IN_PROGRESS:
            DUPLICATES.labels(queue=queue, kind="in_progress").inc()
            return
        if claim.reclaimed:
            DUPLICATES.labels(queue=queue, kind="reclaimed").inc()
    if isinstance(opened, OpenedMessage) and (isinstance(claim, Claim) or claim is SKIPPED):
        _accepted_counter(queue, opened.msg_type).inc()
