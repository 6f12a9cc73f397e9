"""What every scenario reports, and the one table ``make soak`` prints."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Scale:
    """How big a run is: ``small`` inside ``make test``, ``full`` in ``make soak``."""

    name: str
    requests: int  # legitimate key requests (issue 5 asks >= 5,000 for the crash runs)
    hostile: int  # hostile messages mixed in (>= 10,000 at full scale)
    fuzz_inputs: int  # >= 100,000 at full scale


SMALL = Scale("small", requests=300, hostile=300, fuzz_inputs=3_000)
FULL = Scale("full", requests=5_000, hostile=10_000, fuzz_inputs=100_000)


@dataclass
class ScenarioResult:
    scenario: str
    load: int = 0  # legitimate requests sent
    answered: int = 0  # legitimate requests that got exactly one correct answer
    retried_ok: int = 0  # timed out at first, then answered correctly on retry
    faults_injected: int = 0
    faults_survived: int = 0
    hostile_tried: int = 0
    forgeries_accepted: int = 0  # must be 0
    lost: int = 0  # must be 0
    duplicates_processed: int = 0  # must be 0
    # Requests the killed worker had handled but not yet recorded as done, handled again after
    # redelivery. The design allows it (handlers are idempotent: same K_AF, same answer); it is
    # counted apart so it is visible, and closing it needs a transactional outbox.
    rerun_after_crash: int = 0
    seconds: float = 0.0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            self.forgeries_accepted == 0
            and self.lost == 0
            and self.duplicates_processed == 0
            and self.faults_survived == self.faults_injected
            and self.answered + self.retried_ok == self.load
        )


Scenario = Callable[[Scale], Awaitable[ScenarioResult]]

_COLUMNS = (
    ("scenario", "scenario"),
    ("load", "load held"),
    ("answered", "answered"),
    ("retried_ok", "ok on retry"),
    ("faults_injected", "faults injected"),
    ("faults_survived", "survived"),
    ("hostile_tried", "hostile inputs"),
    ("forgeries_accepted", "forgeries accepted"),
    ("lost", "lost"),
    ("duplicates_processed", "duplicates processed"),
    ("rerun_after_crash", "re-run after crash (idempotent)"),
    ("seconds", "seconds"),
)


def format_table(results: Sequence[ScenarioResult]) -> str:
    header = "| " + " | ".join(title for _, title in _COLUMNS) + " | result |"
    rule = "|" + "---|" * (len(_COLUMNS) + 1)
    rows = []
    for r in results:
        cells = [f"{getattr(r, key):.1f}" if key == "seconds" else str(getattr(r, key))
                 for key, _ in _COLUMNS]
        rows.append("| " + " | ".join(cells) + f" | {'pass' if r.passed else 'FAIL'} |")
    total = ScenarioResult(
        "total",
        **{key: sum(getattr(r, key) for r in results) for key, _ in _COLUMNS[1:]},
    )
    cells = [f"{getattr(total, key):.1f}" if key == "seconds" else f"**{getattr(total, key)}**"
             for key, _ in _COLUMNS]
    rows.append(
        "| " + " | ".join(cells) + f" | {'pass' if all(r.passed for r in results) else 'FAIL'} |"
    )
    return "\n".join([header, rule, *rows])


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def write_json(path: Path, results: Sequence[ScenarioResult], scale: Scale) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "scale": dataclasses.asdict(scale),
        "machine": machine(),
        "results": [dataclasses.asdict(r) | {"passed": r.passed} for r in results],
    }
    path.write_text(json.dumps(doc, indent=2))
