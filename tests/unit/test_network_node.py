"""The network node's background purge: it runs on its interval and survives a failing purge."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from network_side.aanf import Aanf
from network_side.node import _purge_loop


class _FlakyAanf:
    """Stands in for the AAnF's purge only: the first call fails as a locked database would."""

    def __init__(self) -> None:
        self.calls = 0

    def purge_expired(self) -> int:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("database is locked")
        return 0


async def test_purge_loop_keeps_going_after_a_failed_purge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aanf = _FlakyAanf()
    with caplog.at_level(logging.ERROR, logger="network_side.node"):
        task = asyncio.create_task(_purge_loop(cast(Aanf, aanf), 0.001))
        for _ in range(1000):
            if aanf.calls >= 3:
                break
            await asyncio.sleep(0.002)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert aanf.calls >= 3
    assert any("purging expired contexts failed" in r.getMessage() for r in caplog.records)
