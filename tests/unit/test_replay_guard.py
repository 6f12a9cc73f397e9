"""ReplayGuard's own rules (time horizon, inputs) and the memory store's bounds."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from broker_adapter.clock import system_clock_ms
from broker_adapter.envelope_errors import FromFutureError, StaleMessageError
from broker_adapter.replay import (
    DIGEST_BYTES,
    Claim,
    ClaimOutcome,
    ClaimRequest,
    Decision,
    Entry,
    EntryState,
    ReplayGuard,
    ReplayStoreError,
)
from broker_adapter.replay_stores import MemoryReplayStore
from tests.unit.test_replay_contract import FakeClock, claim_one, complete_one, release_one

WINDOW, SKEW, LEASE = 1_000, 100, 500
T0 = 1_700_000_000_000


def guard_on(store: MemoryReplayStore, clock: FakeClock) -> ReplayGuard:
    return ReplayGuard(
        store, window_ms=WINDOW, skew_ms=SKEW, in_progress_lease_ms=LEASE, clock=clock
    )


def test_entry_lives_through_window_plus_two_skews_after_its_timestamp() -> None:
    store, clock = MemoryReplayStore(), FakeClock(T0)
    guard = guard_on(store, clock)
    assert guard.entry_lifetime_ms == WINDOW + 2 * SKEW
    msg_id, dig = os.urandom(16), os.urandom(32)
    complete_one(guard, claim_one(guard, msg_id, dig, T0 - 50))
    # At the last instant of its life, the entry still catches a redelivery.
    clock.now = T0 - 50 + WINDOW + 2 * SKEW
    assert claim_one(guard, msg_id, dig, T0 - 50).outcome is ClaimOutcome.DUPLICATE_DONE
    # One millisecond later the guard refuses the timestamp itself rather than forgetting.
    clock.advance(1)
    with pytest.raises(StaleMessageError):
        claim_one(guard, msg_id, dig, T0 - 50)
    assert len(store) == 1


def test_far_future_timestamp_refused_so_entries_cannot_be_pinned() -> None:
    store, clock = MemoryReplayStore(), FakeClock(T0)
    guard = guard_on(store, clock)
    claim_one(guard, os.urandom(16), os.urandom(32), T0 + 2 * SKEW)  # edge: allowed
    with pytest.raises(FromFutureError):
        claim_one(guard, os.urandom(16), os.urandom(32), T0 + 2 * SKEW + 1)
    assert len(store) == 1


def test_only_the_first_128_bits_of_the_digest_are_kept() -> None:
    store, clock = MemoryReplayStore(), FakeClock(T0)
    guard = guard_on(store, clock)
    msg_id, dig = os.urandom(16), os.urandom(32)
    claim_one(guard, msg_id, dig, T0)
    twin = dig[:DIGEST_BYTES] + bytes(32 - DIGEST_BYTES)
    assert claim_one(guard, msg_id, twin, T0).outcome is (
        ClaimOutcome.DUPLICATE_IN_PROGRESS
    )
    with pytest.raises(ValueError):
        claim_one(guard, msg_id, dig[: DIGEST_BYTES - 1], T0)


def test_injected_tokens_are_used_and_checked() -> None:
    store, clock = MemoryReplayStore(), FakeClock(T0)
    tokens = iter([b"A" * 8, b"short"])
    guard = ReplayGuard(
        store,
        window_ms=WINDOW,
        skew_ms=SKEW,
        in_progress_lease_ms=LEASE,
        clock=clock,
        token_source=lambda: next(tokens),
    )
    assert (claim_one(guard, os.urandom(16), os.urandom(32), T0)).token == b"A" * 8
    with pytest.raises(ValueError):
        claim_one(guard, os.urandom(16), os.urandom(32), T0)


def test_only_process_claims_complete_or_release() -> None:
    store, clock = MemoryReplayStore(), FakeClock(T0)
    guard = guard_on(store, clock)
    msg_id, dig = os.urandom(16), os.urandom(32)
    claim_one(guard, msg_id, dig, T0)
    duplicate = claim_one(guard, msg_id, dig, T0)
    with pytest.raises(ValueError):
        guard.complete([(duplicate, None)])
    with pytest.raises(ValueError):
        guard.release([duplicate])
    # Refused before the store is called: the owner's claim is untouched.
    assert store.claim_many([], T0) == [] and len(store) == 1


@pytest.mark.parametrize(("window", "skew", "lease"), [(0, 1, 1), (1, -1, 1), (1, 1, 0)])
def test_guard_refuses_nonsense_configuration(window: int, skew: int, lease: int) -> None:
    with pytest.raises(ValueError):
        ReplayGuard(
            MemoryReplayStore(),
            window_ms=window,
            skew_ms=skew,
            in_progress_lease_ms=lease,
            clock=system_clock_ms,
        )


def test_memory_store_refuses_rather_than_evicts_when_full() -> None:
    store, clock = MemoryReplayStore(max_entries=3), FakeClock(T0)
    guard = guard_on(store, clock)
    kept = [(os.urandom(16), os.urandom(32)) for _ in range(3)]
    for msg_id, dig in kept:
        claim_one(guard, msg_id, dig, T0)
    with pytest.raises(ReplayStoreError) as info:
        claim_one(guard, os.urandom(16), os.urandom(32), T0)
    assert info.value.code == "replay_store_unavailable"
    # Every live entry still blocks its replay, and re-claiming a known key needs no room.
    for msg_id, dig in kept:
        assert claim_one(guard, msg_id, dig, T0).outcome is (
            ClaimOutcome.DUPLICATE_IN_PROGRESS
        )
    clock.advance(LEASE)
    assert claim_one(guard, *kept[0], T0).reclaimed
    # In a batch, only the item that needs room fails.
    new, known = ClaimRequest("af1", os.urandom(16), os.urandom(32), T0), ClaimRequest(
        "af1", *kept[0], T0)
    full, dup = guard.claim([new, known])
    assert isinstance(full, ReplayStoreError)
    assert isinstance(dup, Claim) and dup.outcome is ClaimOutcome.DUPLICATE_IN_PROGRESS
    # Once the entries expire (strictly after their last instant) there is room again.
    clock.now = T0 + WINDOW + 2 * SKEW + 1
    claim_one(guard, os.urandom(16), os.urandom(32), clock.now)
    assert len(store) == 1


def test_memory_store_stays_bounded_under_steady_traffic_and_churn() -> None:
    store, clock = MemoryReplayStore(max_entries=10_000), FakeClock(T0)
    guard = guard_on(store, clock)
    lifetime = WINDOW + 2 * SKEW
    for i in range(5_000):
        clock.advance(1)  # one message per millisecond
        claim = claim_one(guard, os.urandom(16), os.urandom(32), clock.now)
        if i % 3 == 0:
            release_one(guard, claim)  # churn that leaves stale heap items behind
        else:
            complete_one(guard, claim)
        assert len(store) <= lifetime + 1  # the live set, both ends included
    # The expiry heap is bounded too, not just the dictionary.
    assert len(store._expiry) <= 2 * len(store) + 64


def test_purge_on_memory_store_matches_expiry() -> None:
    store = MemoryReplayStore()
    entry = Entry(b"d" * 16, EntryState.DONE, b"", 0, expires_at_ms=100)
    [decision] = store.claim_many([(b"k" * 24, entry)], now_ms=0)
    assert isinstance(decision, Decision) and decision.kind.claims
    # Live through its expiry instant: purged only strictly after it.
    assert store.purge(100) == 0 and len(store) == 1
    assert store.purge(101) == 1 and len(store) == 0


class _NoStore:
    """A store that must not be called."""

    def claim_many(self, items: Sequence[tuple[bytes, Entry]], now_ms: int) -> list[Decision]:
        raise AssertionError("store called")

    def complete_many(self, items: Sequence[object], now_ms: int) -> list[bool]:
        raise AssertionError("store called")

    def release_many(self, items: Sequence[object], now_ms: int) -> list[bool]:
        raise AssertionError("store called")

    def close(self) -> None:
        pass


def test_empty_batches_are_answered_without_the_store_or_the_clock() -> None:
    def no_clock() -> int:
        raise AssertionError("clock read")

    guard = ReplayGuard(_NoStore(), window_ms=WINDOW, skew_ms=SKEW, in_progress_lease_ms=LEASE,
                        clock=no_clock)
    assert guard.claim([]) == []
    assert guard.complete([]) == []
    assert guard.release([]) == []


def test_a_batch_of_only_refused_requests_does_not_call_the_store() -> None:
    guard = ReplayGuard(_NoStore(), window_ms=WINDOW, skew_ms=SKEW, in_progress_lease_ms=LEASE,
                        clock=FakeClock(T0))
    stale, future = guard.claim([
        ClaimRequest("af1", os.urandom(16), os.urandom(32), T0 - WINDOW - 2 * SKEW - 1),
        ClaimRequest("af1", os.urandom(16), os.urandom(32), T0 + 2 * SKEW + 1),
    ])
    assert isinstance(stale, StaleMessageError) and isinstance(future, FromFutureError)
