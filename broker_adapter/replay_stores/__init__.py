"""Stores for ``broker_adapter.replay.ReplayGuard``.

- ``MemoryReplayStore``: a bounded in-process dictionary; a test double, it forgets on restart.
- ``SqliteReplayStore``: the default; a file on disk (WAL) that survives restarts.
- ``RedisReplayStore``: shared by all replicas that consume one queue; atomic via Lua.

The Redis store is imported lazily by name so that users of the other stores never import the
Redis client.
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
        from broker_adapter.replay_stores.redis import RedisReplayStore

        return RedisReplayStore
    raise AttributeError(name)
