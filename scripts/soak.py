"""``make soak``: every reliability and attack scenario at full scale, then one summary table.

Scenarios live in ``reliability.faults`` (crashes, link cuts, cluster) and
``reliability.hostile`` (hostile input, abuse by a legitimate AF, fuzzing). Exit 0 only if every
scenario passed: no forgery accepted, nothing lost, nothing processed twice.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path

from broker_adapter.worker import JsonFormatter, run_worker
from reliability import faults, hostile
from reliability.result import (
    FULL,
    SMALL,
    Scenario,
    ScenarioResult,
    format_table,
    machine,
    write_json,
)


def _registry() -> dict[str, Scenario]:
    return {**faults.SCENARIOS, **hostile.SCENARIOS}


def _log_to_file(path: Path) -> Path:
    """Thousands of expected rejections are logged during a soak: keep them in a file (JSON
    lines, like the workers') so the console shows progress and the table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return path


def _run(scenario: Awaitable[ScenarioResult]) -> ScenarioResult:
    """Run one scenario on the loop the workers run on (``run_worker``'s default), so the
    in-process parties meet faults the way deployed workers would."""
    out: list[ScenarioResult] = []

    async def keep() -> None:
        out.append(await scenario)

    run_worker(keep())
    return out[0]


def main() -> int:
    registry = _registry()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("small", "full"), default="full")
    parser.add_argument("--only", nargs="*", choices=sorted(registry), help="run these scenarios")
    parser.add_argument("--out", default="reliability/results/latest.json")
    args = parser.parse_args()
    scale = FULL if args.scale == "full" else SMALL
    log_file = _log_to_file(Path(args.out).with_name("soak.log"))
    print(f"worker and scenario logs: {log_file}")
    results: list[ScenarioResult] = []
    for name in args.only or list(registry):
        print(f"-- {name} ({scale.name})", flush=True)
        started = time.monotonic()
        try:
            result = _run(registry[name](scale))
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
            result = ScenarioResult(name, lost=-1, notes=f"scenario crashed: {exc!r}")
        result.seconds = result.seconds or time.monotonic() - started
        results.append(result)
        print(f"   {'pass' if result.passed else 'FAIL'} {result.notes}", flush=True)
    print()
    print(f"Soak run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}")
    print(format_table(results))
    write_json(Path(args.out), results, scale)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
