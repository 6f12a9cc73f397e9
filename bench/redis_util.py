"""The machine's Redis, used under a prefix of our own that is removed afterwards."""

from __future__ import annotations

import os
import secrets

from redis import Redis
from redis.exceptions import RedisError

DEFAULT_URL = "redis://127.0.0.1:6379/0"


class RedisPrefix:
    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.client = Redis.from_url(url, decode_responses=False)

    @classmethod
    def open(cls, url: str | None = None) -> RedisPrefix | None:
        """A fresh prefix on the Redis at ``url`` (or AKMA_BENCH_REDIS_URL), None if unreachable."""
        url = url or os.environ.get("AKMA_BENCH_REDIS_URL", DEFAULT_URL)
        prefix = f"akma-bench:{os.getpid()}-{secrets.token_hex(3)}:"
        try:
            rp = cls(url, prefix)
            rp.client.ping()
        except (RedisError, OSError):
            return None
        return rp

    def keys(self) -> list[bytes]:
        return list(self.client.scan_iter(match=self.prefix.encode() + b"*", count=1000))

    def clean(self) -> int:
        """Delete every key under our prefix; returns how many there were."""
        keys = self.keys()
        for i in range(0, len(keys), 1000):
            self.client.delete(*keys[i : i + 1000])
        return len(keys)

    def close(self) -> None:
        self.clean()
        self.client.close()
