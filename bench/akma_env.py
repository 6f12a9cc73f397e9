"""The AKMA side of the bench: subscribers registered directly in the network's context store,
real network worker processes (``python -m network_side``), and the AF's clients in this process.

Registering through the AAnF object (instead of over the broker) only saves set-up time: the
workers read the same encrypted SQLite context store they would after an AUSF registration.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    BENCH_REGISTRY,
    NETWORK,
    REQUEST_QUEUE,
    VHOST,
    BenchError,
    Child,
    Deployment,
)
from broker_adapter.clock import system_clock_ms
from network_side.aanf import Aanf
from network_side.context_store import SqliteContextStore
from network_side.ue_sim import UeSimulator

REALM = "5gc.mnc001.mcc001.3gppnetwork.org"


@dataclass(frozen=True)
class AkmaFixture:
    registry: Path
    master_key: Path
    context_db: Path
    a_kids: tuple[str, ...]


def prepare_akma(dep: Deployment, subscribers: int) -> AkmaFixture:
    registry = dep.work / "af-registry.toml"
    registry.write_text(BENCH_REGISTRY)
    master = dep.work / "master.key"
    key = os.urandom(32)
    master.write_text(key.hex())
    master.chmod(0o600)
    context_db = dep.work / "contexts.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        context_db.with_name(context_db.name + suffix).unlink(missing_ok=True)
    store = SqliteContextStore(context_db, master_key=key)
    aanf = Aanf(store, system_clock_ms)
    a_kids = []
    for i in range(subscribers):
        ue = UeSimulator(supi=f"imsi-00101{i:010d}", k_ausf=os.urandom(32), realm=REALM)
        aanf.register_anchor_key(ue.anchor_key_info())
        a_kids.append(ue.a_kid)
    store.close()
    return AkmaFixture(registry, master, context_db, tuple(a_kids))


class NetworkWorkers:
    """``count`` network worker processes consuming the one request queue."""

    def __init__(self, dep: Deployment, akma: AkmaFixture, count: int, label: str,
                 replay_store: str = "sqlite") -> None:
        self.children: list[Child] = []
        replay = dep.work / f"{label}-replay.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            replay.with_name(replay.name + suffix).unlink(missing_ok=True)
        for i in range(count):
            env = dep.env_for_worker(
                "AKMA_NET_", NETWORK, replay_store=replay_store, replay_sqlite_path=str(replay)
            )
            env.update({
                "AKMA_NET_AF_REGISTRY": str(akma.registry),
                "AKMA_NET_MASTER_KEY_FILE": str(akma.master_key),
                "AKMA_NET_CONTEXT_DB": str(akma.context_db),
                "AKMA_NET_PREFETCH": "64",
            })
            log = dep.work / f"{label}-{i}.log"
            log.unlink(missing_ok=True)
            self.children.append(
                Child(f"{label}-{i}", [sys.executable, "-m", "network_side"], log, env)
            )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            while b'"msg":"ready"' not in child.log_path.read_bytes():
                if child.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"{child.label} not ready:\n{child.log_tail()}")
                time.sleep(0.1)

    def stop(self) -> None:
        for child in self.children:
            child.stop()


def purge_queues(dep: Deployment, *queues: str) -> None:
    mgmt = dep.management()
    for queue in queues or (REQUEST_QUEUE,):
        mgmt.purge(VHOST, queue)
