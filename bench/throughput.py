"""Part 1: one producer process and one consumer process over the bench broker, per variant.

Variants run alternately within each round (rotating the starting variant), so slow drifts in
background load hit every variant alike; each figure is the median over rounds.
Throughput = messages / (consumer's last ack - producer's first publish), both taken in the
child processes so that process start-up is not counted.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench.common import AF, BODY_BYTES, NETWORK, REQUEST_QUEUE, VHOST, Child, Deployment
from bench.redis_util import RedisPrefix

# name -> (mode, replay store of the consumer, SecuritySettings overrides of both parties)
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "plain": ("plain", "memory", {}),
    # plain + one ECDSA P-256 signature per message, verified: the per-message-signature floor.
    "plain_signed": ("plain_signed", "memory", {}),
    "transport": ("transport", "memory", {}),
    # transport + the same one signature and verification: the floor on our own shell.
    "transport_signed": ("transport_signed", "memory", {}),
    # The secured variants with the default settings: a loop turn's deliveries opened,
    # verified and claimed on the envelope thread once there are a few of them.
    "secured_sqlite": ("secured", "sqlite", {}),
    "secured_redis": ("secured", "redis", {}),
    # One Redis script call per message instead of one per batch (replay_redis_batch_scripts).
    "secured_redis_per_key": ("secured", "redis", {"replay_redis_batch_scripts": False}),
    # Everything on the event loop (envelope_thread off), as on a single-core host.
    "secured_sqlite_no_thread": ("secured", "sqlite", {"envelope_thread": False}),
}
# Variants whose processes run on asyncio's own loop instead of the workers' default (uvloop
# where installed), to show what the loop itself gives.
ASYNCIO_LOOP_VARIANTS = {"secured_sqlite_asyncio": "secured_sqlite"}



# "transport" (our shell with plain bodies) separates what the shell gains over stock aio-pika
# from what the security costs.
DEFAULT_VARIANTS = (
    "plain", "plain_signed", "transport", "transport_signed", "secured_sqlite", "secured_redis",
    "secured_sqlite_no_thread", "secured_sqlite_asyncio", "secured_redis_per_key",
)


# Part 7, draining a backlog: the consumer alone, without a producer competing for the cores.
DRAIN_VARIANTS = ("plain", "transport", "secured_sqlite", "secured_sqlite_no_thread")


@dataclass(frozen=True)
class ThroughputConfig:
    count: int
    rounds: int
    window: int = 256
    prefetch: int = 256
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    # Publish everything first, then start the consumer: measures how fast a consumer empties
    # a backlog (a worker catching up after an outage), with the cores to itself and the
    # broker; msg/s is then the consumer's own rate (first to last delivery).
    drain: bool = False


def _consumer_security(dep: Deployment, variant: str, run: int,
                       redis: RedisPrefix | None) -> dict[str, Any]:
    """The consumer's security settings: a fresh SQLite file per run, or the Redis prefix."""
    _, store, overrides = VARIANTS[ASYNCIO_LOOP_VARIANTS.get(variant, variant)]
    security: dict[str, Any] = {"replay_store": store, **overrides}
    if store == "sqlite":
        path = dep.work / f"tp-replay-{variant}-{run}.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        security["replay_sqlite_path"] = str(path)
    if store == "redis":
        if redis is None:
            raise ValueError(f"variant {variant} needs Redis")
        security.update(replay_redis_url=redis.url, replay_redis_prefix=redis.prefix)
    return security


def _one_run(dep: Deployment, variant: str, cfg: ThroughputConfig, run: int,
             redis: RedisPrefix | None) -> dict[str, Any]:
    event_loop = "asyncio" if variant in ASYNCIO_LOOP_VARIANTS else "auto"
    mode, store, overrides = VARIANTS[ASYNCIO_LOOP_VARIANTS.get(variant, variant)]
    security = _consumer_security(dep, variant, run, redis)
    label = f"{'drain' if cfg.drain else 'tp'}-{variant}-{run}"

    def consumer() -> Child:
        return Child.role(
            label + "-consumer",
            "tp-consumer",
            {"mode": mode, "count": cfg.count, "prefetch": cfg.prefetch,
             "body_bytes": BODY_BYTES, "event_loop": event_loop,
             "party": dep.party_config(NETWORK, **security)},
            dep.work,
        )

    cons: Child | None = None
    prod: Child | None = None
    timeout = max(120.0, cfg.count / 100)
    try:
        if not cfg.drain:
            cons = consumer()
            cons.event("ready")
        prod = Child.role(
            label + "-producer",
            "tp-producer",
            {"mode": mode, "count": cfg.count, "window": cfg.window, "body_bytes": BODY_BYTES,
             "event_loop": event_loop, "party": dep.party_config(AF, **overrides)},
            dep.work,
        )
        prod.event("ready")
        if cfg.drain:
            p = prod.event("result", timeout)
            prod.stop(grace_s=10)
            cons = consumer()
        broker0 = dep.broker_cpu_s()
        if not cfg.drain:
            p = prod.event("result", timeout)
        if cons is None:
            raise RuntimeError("the consumer was never started")
        c = cons.event("result", timeout)
        broker1 = dep.broker_cpu_s()
    finally:
        # Both exit by themselves after reporting; the grace lets a profiler write its output.
        if prod is not None:
            prod.stop(grace_s=10)
        if cons is not None:
            cons.stop(grace_s=10)
        if redis is not None and store == "redis":
            redis.clean()
    elapsed = c["last_ts"] - (c["first_ts"] if cfg.drain else p["start_ts"])
    return {
        "msg_per_s": cfg.count / elapsed,
        "publish_msg_per_s": cfg.count / (p["end_ts"] - p["start_ts"]),
        "producer_cpu_us_per_msg": p["cpu_s"] / cfg.count * 1e6,
        "consumer_cpu_us_per_msg": c["cpu_s"] / cfg.count * 1e6,
        # The consumer's event-loop thread alone; the rest is the envelope thread's. Its share
        # of the wall time says whether the loop is what limits the rate.
        "consumer_loop_cpu_us_per_msg": c["loop_cpu_s"] / cfg.count * 1e6,
        "consumer_loop_busy": c["loop_cpu_s"] / max(c["last_ts"] - c["first_ts"], 1e-9),
        "rejected": c["rejected"],
        # Frames per socket write on our coalescing connection (None on stock aio-pika).
        "producer_frames_per_write": p.get("chunks_per_write"),
        "consumer_frames_per_write": c.get("chunks_per_write"),
        # Includes the few connection frames of start-up; None when the bench did not start
        # the broker itself.
        "broker_cpu_us_per_msg": (broker1 - broker0) / cfg.count * 1e6
        if broker0 is not None and broker1 is not None else None,
    }


def run_throughput(dep: Deployment, cfg: ThroughputConfig, redis: RedisPrefix | None,
                   log: Any = print) -> dict[str, Any]:
    variants = [v for v in cfg.variants if v != "secured_redis" or redis is not None]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    mgmt = dep.management()
    for round_ in range(cfg.rounds):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            mgmt.purge(VHOST, REQUEST_QUEUE)
            started = time.monotonic()
            result = _one_run(dep, variant, cfg, round_, redis)
            runs[variant].append(result)
            log(f"  {'drain' if cfg.drain else 'throughput'} {variant:15s} round {round_ + 1}: "
                f"{result['msg_per_s']:8.0f} msg/s "
                f"(consumer CPU {result['consumer_cpu_us_per_msg']:.0f} us/msg, loop "
                f"{result['consumer_loop_cpu_us_per_msg']:.0f} us/msg, busy "
                f"{result['consumer_loop_busy']:.0%}, "
                f"{time.monotonic() - started:.1f} s)")
    out: dict[str, Any] = {"count": cfg.count, "window": cfg.window, "prefetch": cfg.prefetch,
                           "body_bytes": BODY_BYTES, "rounds": cfg.rounds, "variants": {}}
    for variant, results in runs.items():
        keys = ["msg_per_s", "publish_msg_per_s", "producer_cpu_us_per_msg",
                "consumer_cpu_us_per_msg", "consumer_loop_cpu_us_per_msg", "consumer_loop_busy"]
        for optional in ("broker_cpu_us_per_msg", "producer_frames_per_write",
                         "consumer_frames_per_write"):
            if all(r.get(optional) is not None for r in results):
                keys.append(optional)
        out["variants"][variant] = {
            key: statistics.median(r[key] for r in results) for key in keys
        } | {"runs_msg_per_s": [round(r["msg_per_s"], 1) for r in results],
             "rejected": sum(r["rejected"] for r in results)}
    plain = out["variants"]["plain"]["msg_per_s"]
    for row in out["variants"].values():
        row["ratio_to_plain"] = row["msg_per_s"] / plain
    return out
