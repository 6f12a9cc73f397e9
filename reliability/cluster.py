"""Three (or more) isolated local RabbitMQ nodes joined into one cluster, with the quorum queues
replicated on every node.

Built by composition on ``infra.local_broker.LocalBroker``: each node is an ordinary isolated
node (own name, HOME, ports, data, logs), and this module adds what a cluster needs on top:

1. the same Erlang cookie in every node's HOME, written before the first boot (the launcher only
   creates a cookie when none exists), so the nodes may talk to each other;
2. every node boots on its own (loading the definitions, so the launcher's readiness probe, a
   real TLS + EXTERNAL login, passes), then the others ``stop_app``, ``reset``,
   ``join_cluster <first>`` and ``start_app``;
3. the definitions declared the quorum queues while the first node was alone, so each queue has
   one member; ``rabbitmq-queues grow <node> all`` adds the other nodes as members. The result is
   checked through the management API (every queue lists every node as a member).

Each node keeps its own distribution port (``RABBITMQ_DIST_PORT``) and registers with the
machine's epmd; the distinct cookie keeps the machine's default node out of reach.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infra.local_broker import LocalBroker, find_rabbitmq_bin, probe_amqp
from infra.management import Management
from infra.pki import PkiLayout

VHOST = "akma"


class ClusterError(Exception):
    code = "cluster_error"


class LocalCluster:
    def __init__(self, workdir: Path, pki: PkiLayout, size: int = 3) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.workdir = Path(workdir).resolve()
        self.pki = pki
        self.nodes = [LocalBroker(self.workdir / f"node{i}", pki) for i in range(size)]
        self._bin = find_rabbitmq_bin()
        self._cookie = secrets.token_hex(20).upper()
        # Seconds per phase of the last start(), for the scenario's report.
        self.timings: dict[str, float] = {}
        # Nodes that peer discovery did not join and that needed ``rabbitmqctl join_cluster``.
        self.joined_by_hand: list[str] = []

    # ---- addresses --------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.nodes[0].host

    def upstreams(self, first: int = 0) -> list[tuple[str, int]]:
        """AMQP addresses of all nodes, starting with node ``first`` (a client's preference)."""
        order = self.nodes[first:] + self.nodes[:first]
        return [(n.host, n.amqp_port) for n in order]

    def management(self, prefer: int | None = None) -> Management:
        """A management client on a running node (any node's API shows the whole cluster)."""
        for i, node in enumerate(self.nodes):
            if (prefer is None or i == prefer) and node.is_running():
                return Management(node.management_url, node.admin_password, str(self.pki.ca_cert))
        for node in self.nodes:
            if node.is_running():
                return Management(node.management_url, node.admin_password, str(self.pki.ca_cert))
        raise ClusterError("no node of the cluster is running")

    # ---- rabbitmqctl and rabbitmq-queues ------------------------------------------------------

    def _tool(self, node: LocalBroker, tool: str, *args: str, timeout: float = 90.0) -> str:
        # The node's own environment (HOME with the shared cookie, loopback distribution) is
        # what lets the CLI reach it; the launcher builds it, so we reuse that.
        env: dict[str, str] = node._env()
        result = subprocess.run(  # noqa: S603 - the installed RabbitMQ CLI, no shell
            [str(self._bin / tool), "-n", node.nodename, *args],
            env=env,
            cwd=node.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(
                f"{tool} {' '.join(args)} on {node.nodename} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    def ctl(self, node: LocalBroker, *args: str, timeout: float = 90.0) -> str:
        return self._tool(node, "rabbitmqctl", *args, timeout=timeout)

    # ---- lifecycle ------------------------------------------------------------------------------

    def _write_cookie(self, node: LocalBroker) -> None:
        home = node.workdir / "home"
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        cookie = home / ".erlang.cookie"
        if cookie.exists():
            cookie.chmod(0o600)
        fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
        with os.fdopen(fd, "w") as handle:
            handle.write(self._cookie)
        cookie.chmod(0o400)

    def start(self) -> None:
        """Boot every node, join them to the first one, replicate the quorum queues."""
        mark = time.monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            self.timings[name] = round(now - mark, 1)
            mark = now

        for node in self.nodes:
            self._write_cookie(node)
        seed, others = self.nodes[0], self.nodes[1:]
        seed.start()
        phase("boot_seed")
        # The other nodes find the seed through classic peer discovery and join it during
        # their first boot, side by side. The startup delay is cut to nearly nothing: it only
        # guards against several virgin nodes forming separate clusters at once, and the seed
        # is already up.
        for node in others:
            conf_d = node.workdir / "conf.d"
            conf_d.mkdir(parents=True, exist_ok=True, mode=0o700)
            (conf_d / "10-cluster.conf").write_text(
                "cluster_formation.peer_discovery_backend = classic_config\n"
                f"cluster_formation.classic_config.nodes.1 = {seed.nodename}\n"
                "cluster_formation.randomized_startup_delay_range.min = 0\n"
                "cluster_formation.randomized_startup_delay_range.max = 1\n",
                encoding="utf-8",
            )
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(others) or 1) as pool:
            for future in [pool.submit(node.start) for node in others]:
                future.result()
        phase("boot_others")
        # Peer discovery gives up quietly (the node then runs alone); join by hand in that case.
        members = set(self._cluster_nodes(seed))
        for node in others:
            if node.nodename not in members:
                self.ctl(node, "stop_app")
                self.ctl(node, "reset")
                self.ctl(node, "join_cluster", seed.nodename)
                self.ctl(node, "start_app")
                self.joined_by_hand.append(node.nodename)
        phase("join")
        self.wait_running(len(self.nodes))
        for node in self.nodes[1:]:
            self._tool(
                seed, "rabbitmq-queues", "grow", node.nodename, "all",
                "--vhost-pattern", f"^{VHOST}$", "--queue-pattern", ".*",
            )
        self.wait_replicated()
        phase("replicate")
        for node in self.nodes:
            # Every node must serve a real client login before the cluster counts as ready.
            probe_amqp(node.endpoint(), self.pki.network, timeout=10.0)
        phase("probe")

    def _cluster_nodes(self, node: LocalBroker) -> list[str]:
        """Disc members of ``node``'s cluster, as ``rabbitmqctl cluster_status`` reports them."""
        out = self.ctl(node, "cluster_status", "--formatter", "json")
        status: dict[str, Any] = json.loads(out)
        return [str(n) for n in status.get("disk_nodes", [])]

    def running_nodes(self) -> list[str]:
        nodes = self.management().call("GET", "/api/nodes")
        return sorted(n["name"] for n in nodes if n.get("running"))

    def wait_running(self, count: int, timeout: float = 90.0) -> list[str]:
        deadline = time.monotonic() + timeout
        running: list[str] = []
        while time.monotonic() < deadline:
            try:
                running = self.running_nodes()
            except Exception:  # noqa: BLE001 - the API of a booting node may refuse for a while
                running = []
            if len(running) >= count:
                return running
            time.sleep(0.5)
        raise ClusterError(f"only {running} running after {timeout:.0f}s, wanted {count}")

    def queue_members(self) -> dict[str, list[str]]:
        """Members of every quorum queue in the vhost, by queue name."""
        queues: list[dict[str, Any]] = self.management().call("GET", f"/api/queues/{VHOST}")
        return {
            q["name"]: sorted(q.get("members") or [])
            for q in queues
            if q.get("type") == "quorum"
        }

    def wait_replicated(self, timeout: float = 60.0) -> dict[str, list[str]]:
        want = sorted(n.nodename for n in self.nodes)
        deadline = time.monotonic() + timeout
        members: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            members = self.queue_members()
            if members and all(m == want for m in members.values()):
                return members
            time.sleep(0.5)
        raise ClusterError(f"quorum queues not on every node after {timeout:.0f}s: {members}")

    def queue_leaders(self) -> dict[str, str]:
        queues: list[dict[str, Any]] = self.management().call("GET", f"/api/queues/{VHOST}")
        return {q["name"]: str(q.get("leader") or q.get("node")) for q in queues}

    def stop_node(self, index: int) -> None:
        """Stop one node cleanly (``rabbitmqctl stop``); the others keep the cluster going."""
        self.nodes[index].stop()

    def kill_node(self, index: int) -> None:
        self.nodes[index].kill9()

    def start_node(self, index: int) -> None:
        """Start a stopped node again; it rejoins the cluster from its own data directory."""
        node = self.nodes[index]
        self._write_cookie(node)
        node.start()
        self.wait_running(len(self.nodes))

    def close(self) -> None:
        """Throw the cluster away: SIGKILL every node (its data is scratch)."""
        for node in self.nodes:
            node.kill9()

    def nodenames(self) -> Sequence[str]:
        return [n.nodename for n in self.nodes]
