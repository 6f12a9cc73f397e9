"""``run_worker`` picks the workers' event loop: uvloop where installed, asyncio's on request."""

from __future__ import annotations

import asyncio
import sys

import pytest

from broker_adapter.errors import BrokerConfigError
from broker_adapter.worker import run_worker


class _LoopProbe:
    """A main coroutine that records the module of the loop it ran on."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def main(self) -> None:
        self.seen.append(type(asyncio.get_running_loop()).__module__)


def test_auto_runs_on_uvloop_where_installed() -> None:
    pytest.importorskip("uvloop")
    probe = _LoopProbe()
    run_worker(probe.main(), "auto")
    assert probe.seen == ["uvloop"]


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    probe = _LoopProbe()
    run_worker(probe.main(), "asyncio")
    assert len(probe.seen) == 1 and probe.seen[0].startswith("asyncio")


def test_auto_falls_back_and_uvloop_is_a_clear_error_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # "import uvloop" now raises ImportError
    probe = _LoopProbe()
    run_worker(probe.main(), "auto")
    assert len(probe.seen) == 1 and probe.seen[0].startswith("asyncio")
    with pytest.raises(BrokerConfigError, match="uvloop is not installed"):
        run_worker(_LoopProbe().main(), "uvloop")
