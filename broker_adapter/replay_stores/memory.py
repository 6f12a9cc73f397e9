"""In-process replay store: a test double, and the reference the other stores must agree with."""

from __future__ import annotations

import heapq
import threading
from collections.abc import Sequence

from broker_adapter.replay_entries import (
    Decision,
    Entry,
    ReplayStoreError,
    completed_entry,
    decide,
    is_expired,
    may_release,
)


class MemoryReplayStore:
    """A dictionary of entries with amortised expiry and a hard bound on its size.

    When the bound is reached and nothing has expired, a claim fails with ``ReplayStoreError``
    (in that item's place) rather than evicting a live entry: eviction would silently reopen
    the replay window for the evicted message. Size the bound as peak rate x (window + 2 x skew).
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
        # The loop and the envelope thread may call at once; purge runs inside claim_many too.
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    def purge(self, now_ms: int) -> int:
        """Drop every expired entry (``is_expired``); returns how many were dropped."""
        dropped = 0
        with self._lock:
            while self._expiry and is_expired(self._expiry[0][0], now_ms):
                expires_at, key = heapq.heappop(self._expiry)
                entry = self._entries.get(key)
                if entry is not None and entry.expires_at_ms == expires_at:
                    del self._entries[key]
                    dropped += 1
            # Released keys leave heap items behind; rebuild when they dominate, so that the
            # heap, too, stays bounded by the number of live entries.
            if len(self._expiry) > 2 * len(self._entries) + 64:
                self._expiry = [(e.expires_at_ms, k) for k, e in self._entries.items()]
                heapq.heapify(self._expiry)
        return dropped

    def claim_many(
        self, items: Sequence[tuple[bytes, Entry]], now_ms: int
    ) -> list[Decision | Exception]:
        with self._lock:
            self.purge(now_ms)
            out: list[Decision | Exception] = []
            for key, candidate in items:
                try:
                    out.append(self._claim(key, candidate, now_ms))
                except ReplayStoreError as exc:  # full: that item fails, the others may fit
                    out.append(exc)
            return out

    def complete_many(
        self, items: Sequence[tuple[bytes, bytes, bytes | None]], now_ms: int
    ) -> list[bool | Exception]:
        out: list[bool | Exception] = []
        with self._lock:
            for key, token, response in items:
                done = completed_entry(self._entries.get(key), token, response, now_ms)
                if done is not None:
                    self._entries[key] = done
                out.append(done is not None)
        return out

    def release_many(
        self, items: Sequence[tuple[bytes, bytes]], now_ms: int
    ) -> list[bool | Exception]:
        out: list[bool | Exception] = []
        with self._lock:
            for key, token in items:
                owned = may_release(self._entries.get(key), token, now_ms)
                if owned:
                    del self._entries[key]
                out.append(owned)
        return out

    def close(self) -> None:
        self._entries.clear()
        self._expiry.clear()

    def _claim(self, key: bytes, candidate: Entry, now_ms: int) -> Decision:
        existing = self._entries.get(key)
        decision = decide(existing, candidate.digest, now_ms)
        if decision.kind.claims:
            if existing is None and len(self._entries) >= self._max_entries:
                raise ReplayStoreError(f"memory replay store full ({self._max_entries} entries)")
            self._put(key, candidate)
        return decision

    def _put(self, key: bytes, entry: Entry) -> None:
        previous = self._entries.get(key)
        self._entries[key] = entry
        if previous is None or previous.expires_at_ms != entry.expires_at_ms:
            heapq.heappush(self._expiry, (entry.expires_at_ms, key))
