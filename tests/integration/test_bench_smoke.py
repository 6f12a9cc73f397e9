"""The benchmark harness end to end at tiny counts, so that ``make bench`` cannot rot unnoticed.

It runs ``python -m bench.run --tiny`` as ``make bench`` does (its own broker, real producer,
consumer, network worker and responder processes) with the smallest counts and one round, and
checks that every part produced numbers and every output file was written. The numbers
themselves are not judged: at these counts they measure start-up, not throughput.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from infra.errors import BrokerNotInstalledError
from infra.local_broker import find_rabbitmq_bin
from tests.conftest import _unavailable

REPO = Path(__file__).resolve().parents[2]


def test_bench_harness_runs_end_to_end_in_tiny_mode(tmp_path: Path) -> None:
    try:
        find_rabbitmq_bin()
    except BrokerNotInstalledError as exc:
        _unavailable(str(exc))  # fails under CI=true, skips elsewhere
    out = tmp_path / "results"
    proc = subprocess.run(  # noqa: S603 - argv is sys.executable with fixed arguments
        [sys.executable, "-m", "bench.run", "--tiny", "--no-redis",
         "--tp-variants", "plain,secured_sqlite",
         "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "latest.json").read_text())
    assert (out / "latest.md").read_text().startswith("# Benchmark results")
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Every part ran and the secured path really delivered everything it sent.
    tp = results["throughput"]["variants"]
    assert set(tp) == {"plain", "secured_sqlite"}
    assert tp["secured_sqlite"]["msg_per_s"] > 0 and tp["secured_sqlite"]["rejected"] == 0
    drain = results["drain"]["variants"]
    assert set(drain) == {"plain", "transport", "secured_sqlite", "secured_sqlite_no_thread"}
    assert all(row["msg_per_s"] > 0 and row["rejected"] == 0 for row in drain.values())
    assert results["metrics"]["drain_ratio"] > 0
    assert set(results["latency"]["levels"]) == {"1", "16", "64"}
    # Reported beside rpc_p99_ratio (CPU per request, read from /proc: coarse at these counts).
    assert results["metrics"]["rpc_cpu_floor_ratio"] > 0
    assert results["metrics"]["rpc_cpu_ratio"] > 0
    # And the same request against the echo written with stock aio-pika.
    assert results["metrics"]["rpc_p99_ratio_vs_stock"] > 0
    assert all(level["stock"]["n"] > 0 for level in results["latency"]["levels"].values())
    assert results["scaling"]["worker_scaling"] > 0
    assert results["memory"]["sqlite"]["ids"] == 300
    assert results["envelope_cpu"]["envelope_vs_jose_ratio"] > 0
    assert set(results["targets"]) == {
        "throughput_ratio", "rpc_p99_vs_plain_akma_1", "rpc_p99_vs_plain_akma_16",
        "rpc_cpu_over_floor_64", "envelope_vs_jose_ratio", "replay_bytes_per_id",
    }
    assert "loadavg" in results["machine"]
