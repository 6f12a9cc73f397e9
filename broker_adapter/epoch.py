"""Epoch keys: the state that lets the envelope's epoch suites amortise the HPKE KEM.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

EPOCH_KEY_LEN = 32  # AES-256
NONCE_LEN = 12  # AES-GCM's 96-bit IV
# NIST SP 800-38D section 8.3: with random 96-bit IVs, one key may be used for at most 2^32
# encryptions. The configurable limit can never exceed that.
MAX_MESSAGES_PER_KEY = 2**32

DEFAULT_MAX_MESSAGES = 10_000
DEFAULT_MAX_AGE_MS = 300_000
DEFAULT_MAX_PEERS = 4096
DEFAULT_CACHE_ENTRIES = 4096
# A receiver keeps an unwrapped key for ten minutes: longer than a sender's epoch (five minutes
# by default) plus the accepted timestamp span, so one epoch normally costs one HPKE open per
# replica; a late message after expiry simply pays one more HPKE open.
DEFAULT_CACHE_TTL_MS = 600_000


@dataclass(frozen=True)
class EpochLimits:
    """How long the sender may reuse one epoch key: whichever bound is reached first."""

    max_messages: int = DEFAULT_MAX_MESSAGES
    max_age_ms: int = DEFAULT_MAX_AGE_MS

    def __post_init__(self) -> None:
        if not 1 <= self.max_messages <= MAX_MESSAGES_PER_KEY:
            raise ValueError(f"max_messages must be 1..{MAX_MESSAGES_PER_KEY}")
        if self.max_age_ms <= 0:
            raise ValueError("max_age_ms must be positive")


@dataclass
class SenderEpoch:
    """One live epoch on the sending side."""

    wrapped: bytes  # HPKE enc || ciphertext of K, sent in every envelope of the epoch
    aead: AESGCM  # keyed with K; building it once saves a key schedule per message
    aad: bytes  # the epoch's associated data (fixed per peer, suite and key id)
    created_ms: int
    uses: int = 0


# (suite name, sender name, recipient name, recipient key id)
EpochSlot = tuple[str, str, str, bytes]


class SenderEpochs:
    """Sender-side epochs, one per (suite, sender, recipient, recipient key id).

    The recipient key id is part of the slot, so a recipient's key rotation starts a new epoch
    at once. The map is bounded: past ``max_peers`` slots the oldest epoch is dropped, which
    costs only a new HPKE wrap if that peer is addressed again.
    """

    def __init__(
        self, limits: EpochLimits | None = None, *, max_peers: int = DEFAULT_MAX_PEERS
    ) -> None:
        if max_peers <= 0:
            raise ValueError("max_peers must be positive")
        self.limits = limits or EpochLimits()
        self._max_peers = max_peers
        self._epochs: OrderedDict[EpochSlot, SenderEpoch] = OrderedDict()
        self._lock = threading.Lock()

    def _usable(self, epoch: SenderEpoch, now_ms: int) -> bool:
        age = now_ms - epoch.created_ms
        # A clock that went backwards also ends the epoch: its age is no longer known.
        return epoch.uses < self.limits.max_messages and 0 <= age < self.limits.max_age_ms

    def acquire(
        self, slot: EpochSlot, now_ms: int, create: Callable[[], SenderEpoch]
    ) -> SenderEpoch:
        """Return the live epoch for ``slot`` with one use counted, creating it if needed.

        ``create`` runs under the lock, so two threads never wrap two keys for one slot and
        the use counter never exceeds the limit.
        """
        with self._lock:
            epoch = self._epochs.get(slot)
            if epoch is None or not self._usable(epoch, now_ms):
                epoch = create()
                self._epochs[slot] = epoch
                self._epochs.move_to_end(slot)
                while len(self._epochs) > self._max_peers:
                    self._epochs.popitem(last=False)
            epoch.uses += 1
            return epoch

    def forget(self, slot: EpochSlot | None = None) -> None:
        """Drop one slot's epoch (or all): the next message starts a fresh epoch."""
        with self._lock:
            if slot is None:
                self._epochs.clear()
            else:
                self._epochs.pop(slot, None)

    def __len__(self) -> int:
        return len(self._epochs)


class EpochKeyCache:
    """Receiver-side map from an epoch id to its unwrapped key, bounded and expiring.

    The epoch id is SHA-256 over the HPKE ``info`` and the wrapped key, i.e. over attacker-
    supplied bytes, so the cache must not be something garbage can fill. ``open_envelope``
    therefore stores a key only after a message under it has passed decryption, the signature
    of a trusted signer and the identity bindings. A party without a trusted signing key cannot
    insert or displace anything; junk costs one HPKE open per message, exactly what the
    per-message suites always cost. A trusted but hostile peer can churn the LRU with fresh
    epochs, each costing it a signature and an HPKE wrap; that degrades other peers to one HPKE
    open per message, never worse, and memory stays at ``max_entries``.

    Entries expire ``ttl_ms`` after insertion (not after last use), which bounds how long a key
    stays in memory whatever the traffic.
    """

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
        ttl_ms: int = DEFAULT_CACHE_TTL_MS,
    ) -> None:
        if max_entries <= 0 or ttl_ms <= 0:
            raise ValueError("max_entries and ttl_ms must be positive")
        self.max_entries = max_entries
        self.ttl_ms = ttl_ms
        self._entries: OrderedDict[bytes, tuple[AESGCM, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, epoch_id: bytes, now_ms: int) -> AESGCM | None:
        with self._lock:
            entry = self._entries.get(epoch_id)
            if entry is None:
                return None
            aead, expires_ms = entry
            if now_ms >= expires_ms:
                del self._entries[epoch_id]
                return None
            self._entries.move_to_end(epoch_id)
            return aead

    def put(self, epoch_id: bytes, aead: AESGCM, now_ms: int) -> None:
        with self._lock:
            self._entries[epoch_id] = (aead, now_ms + self.ttl_ms)
            self._entries.move_to_end(epoch_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, epoch_id: object) -> bool:
        return epoch_id in self._entries


__all__ = [
    "DEFAULT_CACHE_ENTRIES",
    "DEFAULT_CACHE_TTL_MS",
    "DEFAULT_MAX_AGE_MS",
    "DEFAULT_MAX_MESSAGES",
    "EPOCH_KEY_LEN",
    "MAX_MESSAGES_PER_KEY",
    "NONCE_LEN",
    "EpochKeyCache",
    "EpochLimits",
    "EpochSlot",
    "SenderEpoch",
    "SenderEpochs",
]
