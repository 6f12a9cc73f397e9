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
from dataclasses import dataclass
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


# The broker-backed parts; the others run in this process.
_BROKER_PARTS = frozenset({"throughput", "drain", "latency", "scaling"})
# Envelope CPU and pieces take medians, so they run at least this many rounds.
_MIN_CPU_ROUNDS = 3


@dataclass(frozen=True)
class _Plan:
    """What one run measures, from the command line."""

    parts: set[str]
    sizes: dict[str, Any]
    rounds: int
    tp_variants: tuple[str, ...]
    mode: str
    work: Path
    out: Path
    use_redis: bool


def _parse(argv: list[str] | None) -> _Plan:
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
    return _Plan(parts=parts, sizes=sizes, rounds=rounds, tp_variants=tp_variants, mode=mode,
                 work=args.work, out=args.out, use_redis=not args.no_redis)


def _in_process_parts(plan: _Plan, redis: RedisPrefix | None, results: dict[str, Any]) -> None:
    parts, sizes = plan.parts, plan.sizes
    if "cpu" in parts:
        _log("== envelope CPU: seal+open per suite vs JOSE")
        results["envelope_cpu"] = run_cpu(sizes["cpu"], max(plan.rounds, _MIN_CPU_ROUNDS))
    if "pieces" in parts:
        _log("== secured path pieces in process (open, claim, complete, seal)")
        results["pieces"] = run_pieces(sizes["pieces"], max(plan.rounds, _MIN_CPU_ROUNDS))
    if "memory" in parts:
        _log("== replay state per live message id")
        results["memory"] = asyncio.run(
            run_memory(_workdir(plan.work / "memory"), redis, sizes["mem"]))


def _with_broker(plan: _Plan, redis: RedisPrefix | None, results: dict[str, Any]) -> None:
    """The broker-backed parts on a fresh isolated node, stopped afterwards."""
    if not plan.parts & _BROKER_PARTS:
        return
    pki = ensure_dev_pki(plan.work / "pki", afs=[AF])
    broker = LocalBroker(plan.work / "broker", pki)
    if broker.is_running():
        broker.stop()
    # A node without earlier runs' queue logs and segments: every run starts alike.
    shutil.rmtree(plan.work / "broker" / "mnesia", ignore_errors=True)
    _log("== starting the bench broker (isolated TLS RabbitMQ node)")
    endpoint = broker.start()
    _log(f"   ready in {broker.boot_seconds}s at {endpoint.amqp_url}")
    try:
        dep = Deployment(endpoint, pki, _workdir(plan.work / "run"), broker.process_group)
        asyncio.run(_broker_parts(dep, plan, redis, results))
    finally:
        broker.stop()
        _log("   broker stopped")


async def _broker_parts(
    dep: Deployment, plan: _Plan, redis: RedisPrefix | None, results: dict[str, Any]
) -> None:
    parts, sizes, rounds = plan.parts, plan.sizes, plan.rounds
    if "throughput" in parts:
        _log("== throughput: producer and consumer processes")
        results["throughput"] = run_throughput(
            dep, ThroughputConfig(count=sizes["tp"], rounds=rounds, variants=plan.tp_variants),
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
    plan = _parse(argv)
    started = time.monotonic()
    results: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": plan.mode,
        "rounds": plan.rounds,
        "machine": machine_info(),
    }
    redis = RedisPrefix.open() if plan.use_redis else None
    if redis is None:
        _log("Redis not reachable (or --no-redis): the Redis variants are skipped")
    try:
        _in_process_parts(plan, redis, results)
        _with_broker(plan, redis, results)
    finally:
        if redis is not None:
            redis.close()
    results["machine_after"] = machine_info()
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["metrics"] = headline(results)
    results["targets"] = verdicts(results["metrics"])
    text = write_all(results, plan.out)
    print()
    print(text)
    print(f"wrote {plan.out / 'latest.json'}, latest.md, latest.png in {results['duration_s']} s")
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
