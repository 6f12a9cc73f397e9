"""Part 3: envelope seal+open CPU per suite against joserfc's nested JWS-in-JWE.

Reuses ``bench.envelope_bench`` (same claims, same steady-state set-up, CPU time of this
process); every round runs every path once in rotating order, figures are medians.
"""

from __future__ import annotations

from typing import Any

from bench import envelope_bench as eb
from broker_adapter.suites import DEFAULT_SUITE_NAME, SUITES

JOSE = "JOSE nested JWS(Ed25519) in JWE(ECDH-ES X25519, A256GCM), joserfc"


def run_cpu(number: int, rounds: int) -> dict[str, Any]:
    world = eb._world()
    paths = {name: eb.bench_suite(world, name)
             for name in [DEFAULT_SUITE_NAME, *sorted(set(SUITES) - {DEFAULT_SUITE_NAME})]}
    paths[JOSE] = eb.bench_jose()
    order = list(paths)
    for round_ in range(rounds):
        shift = round_ % len(order)
        for name in order[shift:] + order[:shift]:
            paths[name].run(number)
    rows = {name: path.result() for name, path in paths.items()}
    jose = rows[JOSE]["total_us"]
    for row in rows.values():
        row["ratio_to_jose"] = row["total_us"] / jose
    return {
        "number": number,
        "rounds": rounds,
        "clock": "process CPU time",
        "default_suite": DEFAULT_SUITE_NAME,
        "suites": rows,
        "envelope_vs_jose_ratio": rows[DEFAULT_SUITE_NAME]["ratio_to_jose"],
    }
