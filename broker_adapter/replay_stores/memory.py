"""In-process replay store: a test double, and the reference the other stores must agree with."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from broker_adapter.replay import (
    Decision,
    Entry,
    ReplayStoreError,
    completed_entry,
    decide,
    may_release,
)


class MemoryReplayStore:
    """A dictionary of entries with amortised expiry and a hard bound on its size.

    When the bound is reached and nothing has expired, a claim fails with ``ReplayStoreError``
    rather than evicting a live entry: eviction would silently reopen the replay window for the
    evicted message. Size the bound as peak rate x (window + 2 x skew).
    """

    def __init__(self, *, max_entries: int = 1_000_000) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._max_entries = max_entries
        self._entries: dict[bytes, Entry] = {}
        # (expires_at_ms, key) for every entry ever written. Stale heap items (the key was
        # released, or rewritten with another expiry) are skipped when popped, which keeps
        # writes O(log n) instead of searching the heap.
        self._expiry: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def purge(self, now_ms: int) -> int:
        """Drop every expired entry; returns how many were dropped."""
        dropped = 0
        while self._expiry and self._expiry[0][0] <= now_ms:
            expires_at, key = heapq.heappop(self._expiry)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at_ms == expires_at:
                del self._entries[key]
                dropped += 1
        # Released keys leave heap items behind; rebuild when they dominate so that the heap,
        # too, stays bounded by the number of live entries.
        if len(self._expiry) > 2 * len(self._entries) + 64:
            self._expiry = [(e.expires_at_ms, k) for k, e in self._entries.items()]
            heapq.heapify(self._expiry)
        return dropped

    async def claim(self, key: bytes, candidate: Entry, now_ms: int) -> Decision:
        self.purge(now_ms)
        existing = self._entries.get(key)
        decision = decide(existing, candidate.digest, now_ms)
        if decision.kind.claims:
            if existing is None and len(self._entries) >= self._max_entries:
                raise ReplayStoreError(f"memory replay store full ({self._max_entries} entries)")
            self._put(key, candidate)
        return decision

    async def complete(self, key: bytes, token: bytes, response: bytes | None, now_ms: int) -> bool:
        done = completed_entry(self._entries.get(key), token, response, now_ms)
        if done is None:
            return False
        self._entries[key] = done
        return True

    async def claim_many(
        self, items: Sequence[tuple[bytes, Entry]], now_ms: int
    ) -> list[Decision | Exception]:
        out: list[Decision | Exception] = []
        for key, candidate in items:
            try:
                out.append(await self.claim(key, candidate, now_ms))
            except ReplayStoreError as exc:  # full: that item fails, the others may fit
                out.append(exc)
        return out

    async def complete_many(
        self, items: Sequence[tuple[bytes, bytes, bytes | None]], now_ms: int
    ) -> list[bool | Exception]:
        return [await self.complete(key, token, response, now_ms)
                for key, token, response in items]

    async def release(self, key: bytes, token: bytes, now_ms: int) -> bool:
        if not may_release(self._entries.get(key), token, now_ms):
            return False
        del self._entries[key]
        return True

    async def close(self) -> None:
        self._entries.clear()
        self._expiry.clear()

    def _put(self, key: bytes, entry: Entry) -> None:
        previous = self._entries.get(key)
        self._entries[key] = entry
        if previous is None or previous.expires_at_ms != entry.expires_at_ms:
            heapq.heappush(self._expiry, (entry.expires_at_ms, key))
