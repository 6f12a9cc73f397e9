"""Stores for ``broker_adapter.replay.ReplayGuard``.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker_adapter.replay_stores.memory import MemoryReplayStore
from broker_adapter.replay_stores.sqlite import SqliteReplayStore

if TYPE_CHECKING:
    from broker_adapter.replay_stores.redis import RedisReplayStore

__all__ = ["MemoryReplayStore", "RedisReplayStore", "SqliteReplayStore"]


def __getattr__(name: str) -> Any:
    if name == "RedisReplayStore":
        from broker_adapter.replay_stores.redis import RedisReplayStore  # noqa: PLC0415 - lazy

        return RedisReplayStore
    raise AttributeError(name)
