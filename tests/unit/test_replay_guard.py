"""ReplayGuard's own rules (time horizon, inputs) and the memory store's bounds."""

from __future__ import annotations

import os

import pytest

from broker_adapter.envelope_errors import FromFutureError, StaleMessageError
from broker_adapter.replay import (
    DIGEST_BYTES,
    ClaimOutcome,
    Entry,
    EntryState,
    ReplayGuard,
    ReplayStoreError,
)
from broker_adapter.replay_stores import MemoryReplayStore, system_clock_ms
from tests.unit.test_replay_contract import FakeClock

WINDOW, SKEW, LEASE = 1_000, 100, 500
T0 = 1_700_000_000_000


def guard_on(store: MemoryReplayStore, clock: FakeClock) -> ReplayGuard:
    return ReplayGuard(
        store, window_ms=WINDOW, skew_ms=SKEW, in_progress_lease_ms=LEASE, clock=clock
    )


async def test_entry_lives_window_plus_two_skews_after_its_timestamp() -> None:
    store, clock = MemoryReplayStore(), FakeClock(T0)
    guard = guard_on(store, clock)
    assert guard.entry_lifetime_ms == WINDOW + 2 * SKEW
    msg_id, dig = os.urandom(16), os.urandom(32)
    claim = await guard.claim("af1", msg_id, dig, T0 - 50)
    await guard.complete(claim)
    # One millisecond before the end of its life, the entry still catches a redelivery.
    clock.now = T0 - 50 + WINDOW + 2 * SKEW - 1
    assert (await guard.claim("af1", msg_id, dig, T0 - 50)).outcome is (ClaimOutcome.DUPLICATE_DONE)
    # At the end of its life the guard refuses the timestamp itself rather than forgetting.
    clock.advance(1)
    with pytest.raises(StaleMessageError):
        await guard.claim("af1", msg_id, dig, T0 - 50)


async def test_far_future_timestamp_refused_so_entries_cannot_be_pinned() -> None:
    store, clock = MemoryReplayStore(), FakeClock(T0)
    guard = guard_on(store, clock)
    await guard.claim("af1", os.urandom(16), os.urandom(32), T0 + 2 * SKEW)  # edge: allowed
    with pytest.raises(FromFutureError):
        await guard.claim("af1", os.urandom(16), os.urandom(32), T0 + 2 * SKEW + 1)
    assert len(store) == 1


async def test_only_the_first_128_bits_of_the_digest_are_kept() -> None:
    store, clock = MemoryReplayStore(), FakeClock(T0)
    guard = guard_on(store, clock)
    msg_id, dig = os.urandom(16), os.urandom(32)
    await guard.claim("af1", msg_id, dig, T0)
    twin = dig[:DIGEST_BYTES] + bytes(32 - DIGEST_BYTES)
    assert (await guard.claim("af1", msg_id, twin, T0)).outcome is (
        ClaimOutcome.DUPLICATE_IN_PROGRESS
    )
    with pytest.raises(ValueError):
        await guard.claim("af1", msg_id, dig[: DIGEST_BYTES - 1], T0)


async def test_injected_tokens_are_used_and_checked() -> None:
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
    assert (await guard.claim("af1", os.urandom(16), os.urandom(32), T0)).token == b"A" * 8
    with pytest.raises(ValueError):
        await guard.claim("af1", os.urandom(16), os.urandom(32), T0)


async def test_only_process_claims_complete_or_release() -> None:
    store, clock = MemoryReplayStore(), FakeClock(T0)
    guard = guard_on(store, clock)
    msg_id, dig = os.urandom(16), os.urandom(32)
    await guard.claim("af1", msg_id, dig, T0)
    duplicate = await guard.claim("af1", msg_id, dig, T0)
    with pytest.raises(ValueError):
        await guard.complete(duplicate)
    with pytest.raises(ValueError):
        await guard.release(duplicate)


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


async def test_memory_store_refuses_rather_than_evicts_when_full() -> None:
    store, clock = MemoryReplayStore(max_entries=3), FakeClock(T0)
    guard = guard_on(store, clock)
    kept = [(os.urandom(16), os.urandom(32)) for _ in range(3)]
    for msg_id, dig in kept:
        await guard.claim("af1", msg_id, dig, T0)
    with pytest.raises(ReplayStoreError) as info:
        await guard.claim("af1", os.urandom(16), os.urandom(32), T0)
    assert info.value.code == "replay_store_unavailable"
    # Every live entry still blocks its replay, and re-claiming a known key needs no room.
    for msg_id, dig in kept:
        assert (await guard.claim("af1", msg_id, dig, T0)).outcome is (
            ClaimOutcome.DUPLICATE_IN_PROGRESS
        )
    clock.advance(LEASE)
    assert (await guard.claim("af1", *kept[0], T0)).reclaimed
    # Once the entries expire there is room again.
    clock.now = T0 + WINDOW + 2 * SKEW
    await guard.claim("af1", os.urandom(16), os.urandom(32), clock.now)
    assert len(store) == 1


async def test_memory_store_stays_bounded_under_steady_traffic_and_churn() -> None:
    store, clock = MemoryReplayStore(max_entries=10_000), FakeClock(T0)
    guard = guard_on(store, clock)
    lifetime = WINDOW + 2 * SKEW
    for i in range(5_000):
        clock.advance(1)  # one message per millisecond
        claim = await guard.claim("af1", os.urandom(16), os.urandom(32), clock.now)
        if i % 3 == 0:
            await guard.release(claim)  # churn that leaves stale heap items behind
        else:
            await guard.complete(claim)
        assert len(store) <= lifetime
    # The expiry heap is bounded too, not just the dictionary.
    assert len(store._expiry) <= 2 * len(store) + 64


async def test_purge_on_memory_store_matches_expiry() -> None:
    store = MemoryReplayStore()
    entry = Entry(b"d" * 16, EntryState.DONE, b"", 0, expires_at_ms=100)
    decision = await store.claim(b"k" * 24, entry, now_ms=0)
    assert decision.kind.claims
    assert store.purge(99) == 0 and len(store) == 1
    assert store.purge(100) == 1 and len(store) == 0
