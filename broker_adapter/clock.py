"""The system clock the shell injects into the pure core."""

from __future__ import annotations

import time


def system_clock_ms() -> int:
    """Wall-clock unix milliseconds: wall time, not monotonic, because entries and messages are
    compared with timestamps made on other processes and hosts."""
    return time.time_ns() // 1_000_000
