"""Integration tier: every test here talks to the real TLS broker from ``tests/conftest.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/integration needs the broker, so it carries the marker even if a
    # test module forgets it; `-m "not broker"` then runs the broker-free tiers alone.
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.broker)
