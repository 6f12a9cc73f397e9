"""The pure half of ack coalescing: which deliveries one flush may ack, and how."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker_adapter.transport.acks import AckLedger, AckPlan


def _ledger(*tags: int) -> AckLedger:
    ledger = AckLedger()
    for tag in tags:
        ledger.delivered(tag)
    return ledger


def test_nothing_finished_sends_nothing() -> None:
    ledger = _ledger(1, 2, 3)
    assert ledger.take().empty
    assert ledger.unsettled == 3


def test_finished_prefix_becomes_one_multiple_ack() -> None:
    ledger = _ledger(1, 2, 3, 4)
    for tag in (2, 1, 3):
        ledger.finished(tag)
    assert ledger.take() == AckPlan(up_to=3)
    assert ledger.unsettled == 1
    ledger.finished(4)
    assert ledger.take() == AckPlan(up_to=4)
    assert ledger.unsettled == 0


def test_finished_behind_an_unfinished_delivery_go_singly_and_at_once() -> None:
    ledger = _ledger(1, 2, 3, 4, 5)
    for tag in (1, 3, 5):
        ledger.finished(tag)
    # 2 and 4 still run: a multiple ack up to 3 or 5 would settle them too.
    assert ledger.take() == AckPlan(up_to=1, singles=(3, 5))
    assert ledger.unsettled == 2
    assert ledger.take().empty


def test_delivery_settled_elsewhere_is_never_covered() -> None:
    ledger = _ledger(1, 2, 3)
    ledger.finished(1)
    ledger.settled_elsewhere(2)  # nacked for requeue
    ledger.finished(3)
    # 2 left the ledger, so the prefix 1..3 covers only finished deliveries of ours.
    assert ledger.take() == AckPlan(up_to=3)
    assert ledger.unsettled == 0


def test_finishing_twice_or_an_unknown_tag_is_ignored() -> None:
    ledger = _ledger(1)
    ledger.finished(7)
    ledger.finished(1)
    ledger.finished(1)
    assert ledger.take() == AckPlan(up_to=1)
    ledger.settled_elsewhere(1)
    assert ledger.take().empty


@given(st.lists(st.tuples(st.sampled_from(["finish", "other", "take"]), st.integers(1, 30)),
                max_size=120))
def test_every_finished_delivery_is_acked_exactly_once_and_nothing_else(
    steps: list[tuple[str, int]],
) -> None:
    tags = list(range(1, 31))
    ledger = _ledger(*tags)
    finished: set[int] = set()
    elsewhere: set[int] = set()
    acked: list[int] = []
    outstanding = set(tags)

    def apply(plan: AckPlan) -> None:
        if plan.up_to is not None:
            covered = {t for t in outstanding if t <= plan.up_to}
            # A multiple ack may only cover deliveries that are finished.
            assert covered <= finished
            acked.extend(covered)
            outstanding.difference_update(covered)
        for tag in plan.singles:
            assert tag in finished and tag in outstanding
            acked.append(tag)
            outstanding.discard(tag)

    for action, tag in steps:
        if action == "finish" and tag not in elsewhere:
            ledger.finished(tag)
            finished.add(tag)
        elif action == "other" and tag not in finished and tag in outstanding:
            ledger.settled_elsewhere(tag)
            elsewhere.add(tag)
            outstanding.discard(tag)
        else:
            apply(ledger.take())
    apply(ledger.take())
    assert sorted(acked) == sorted(set(acked))
    assert set(acked) == finished
    assert ledger.unsettled == len(outstanding)
