"""``make bench``: every comparison, secured against plain, side by side in one run.

    .venv/bin/python -m bench.run [--quick] [--rounds N] [--parts cpu,memory,throughput,...]

Starts its own isolated TLS RabbitMQ node (and stops it), uses the machine's Redis under a
private prefix (removed afterwards), and writes bench/results/latest.{json,md,png}. Exit status
0 whenever the measurements ran: a missed target is a finding, reported in the table.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.akma_env import prepare_akma
from bench.common import AF, REPO, Deployment, machine_info
from bench.cpu import run_cpu
from bench.latency import LatencyConfig, run_latency
from bench.memory import run_memory
from bench.pieces import run_pieces
from bench.redis_util import RedisPrefix
from bench.report import headline, verdicts, write_all
from bench.scaling import ScalingConfig, run_scaling
from bench.throughput import (
    ASYNCIO_LOOP_VARIANTS,
    DEFAULT_VARIANTS,
    DRAIN_VARIANTS,
    VARIANTS,
    ThroughputConfig,
    run_throughput,
)
from infra.local_broker import LocalBroker
from infra.pki import ensure_dev_pki

PARTS = ("cpu", "pieces", "memory", "throughput", "drain", "latency", "scaling")


def _log(text: str) -> None:
    print(text, flush=True)


def _sizes(quick: bool, tiny: bool) -> dict[str, Any]:
    if tiny:
        return {"tp": 150, "lat": {1: 10, 16: 32, 64: 64}, "scale": 100, "cpu": 30, "mem": 300,
                "subscribers": 64, "pieces": 64}
    if quick:
        return {"tp": 2000, "lat": {1: 50, 16: 160, 64: 320}, "scale": 500, "cpu": 100,
                "mem": 2000, "subscribers": 256, "pieces": 1000}
    return {"tp": 20000, "lat": {1: 400, 16: 1600, 64: 3200}, "scale": 3000, "cpu": 400,
            "mem": 20000, "subscribers": 256, "pieces": 4000}


async def _broker_parts(dep: Deployment, parts: set[str], sizes: dict[str, Any], rounds: int,
                        redis: RedisPrefix | None, results: dict[str, Any],
                        tp_variants: tuple[str, ...]) -> None:
    if "throughput" in parts:
        _log("== throughput: producer and consumer processes")
        results["throughput"] = run_throughput(
            dep, ThroughputConfig(count=sizes["tp"], rounds=rounds, variants=tp_variants),
            redis, _log)
    if "drain" in parts:
        _log("== draining a backlog: publish first, then one consumer process")
        results["drain"] = run_throughput(
            dep, ThroughputConfig(count=sizes["tp"], rounds=rounds, variants=DRAIN_VARIANTS,
                                  drain=True),
            redis, _log)
    if parts & {"latency", "scaling"}:
        akma = prepare_akma(dep, sizes["subscribers"])
        if "latency" in parts:
            _log("== K_AF request latency: secured AKMA request vs plain request/response")
            results["latency"] = await run_latency(
                dep, akma, LatencyConfig(rounds=rounds, requests=sizes["lat"]), _log)
        if "scaling" in parts:
            _log("== scaling: one vs two network worker processes")
            results["scaling"] = await run_scaling(
                dep, akma, ScalingConfig(requests=sizes["scale"], rounds=rounds), _log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="secured vs plain benchmarks")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--tiny", action="store_true", help="minimal counts (the smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument(
        "--tp-variants",
        default=None,
        help="throughput variants (default all): plain,transport,secured_sqlite,...",
    )
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis variants")
    parser.add_argument("--work", type=Path, default=REPO / "var" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if unknown := parts - set(PARTS):
        parser.error(f"unknown parts: {sorted(unknown)}")
    rounds = args.rounds if args.rounds is not None else (1 if args.tiny else 5)
    if rounds < 1:
        parser.error("--rounds must be positive")
    sizes = _sizes(args.quick, args.tiny)
    tp_variants = tuple(args.tp_variants.split(",")) if args.tp_variants else DEFAULT_VARIANTS
    known = [*VARIANTS, *ASYNCIO_LOOP_VARIANTS]
    if set(tp_variants) - set(known) or "plain" not in tp_variants:
        parser.error(f"throughput variants must include plain and be among {known}")
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    started = time.monotonic()
    results: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "rounds": rounds,
        "machine": machine_info(),
    }
    redis = None if args.no_redis else RedisPrefix.open()
    if redis is None:
        _log("Redis not reachable (or --no-redis): the Redis variants are skipped")
    try:
        if "cpu" in parts:
            _log("== envelope CPU: seal+open per suite vs JOSE")
            results["envelope_cpu"] = run_cpu(sizes["cpu"], max(rounds, 3))
        if "pieces" in parts:
            _log("== secured path pieces in process (open, claim, complete, seal)")
            results["pieces"] = run_pieces(sizes["pieces"], max(rounds, 3))
        if "memory" in parts:
            _log("== replay state per live message id")
            results["memory"] = asyncio.run(
                run_memory(_workdir(args.work / "memory"), redis, sizes["mem"]))
        if parts & {"throughput", "drain", "latency", "scaling"}:
            pki = ensure_dev_pki(args.work / "pki", afs=[AF])
            broker = LocalBroker(args.work / "broker", pki)
            if broker.is_running():
                broker.stop()
            # A node without earlier runs' queue logs and segments: every run starts alike.
            shutil.rmtree(args.work / "broker" / "mnesia", ignore_errors=True)
            _log("== starting the bench broker (isolated TLS RabbitMQ node)")
            endpoint = broker.start()
            _log(f"   ready in {broker.boot_seconds}s at {endpoint.amqp_url}")
            try:
                dep = Deployment(endpoint, pki, _workdir(args.work / "run"), broker.process_group)
                asyncio.run(_broker_parts(dep, parts, sizes, rounds, redis, results, tp_variants))
            finally:
                broker.stop()
                _log("   broker stopped")
    finally:
        if redis is not None:
            redis.close()
    results["machine_after"] = machine_info()
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["metrics"] = headline(results)
    results["targets"] = verdicts(results["metrics"])
    text = write_all(results, args.out)
    print()
    print(text)
    print(f"wrote {args.out / 'latest.json'}, latest.md, latest.png in {results['duration_s']} s")
    missed = [n for n, v in results["targets"].items() if not v["met"]]
    if missed:
        print(f"targets missed (reported, not a failure): {', '.join(missed)}")
    return 0


def _workdir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
