"""The workers as an operator runs them: ``python -m network_side`` and two ``python -m as_side``
processes configured only through the environment, driven through the AF's Ua* port, scraped
over /metrics, and stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from akma_contract.identifiers import UA_TLS13_SHARED_KEY
from akma_contract.topology import inbox_queue
from as_side.ua_server import key_proof, ua_request
from infra.pki import PkiLayout
from network_side.ue_sim import UeSimulator
from tests.integration import akma_harness as h

pytestmark = pytest.mark.broker

REALM = "5gc.mnc001.mcc001.3gppnetwork.org"
AF1 = "af1.example.com"
AF2 = "af2.example.com"
READY_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 15.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _base_env() -> dict[str, str]:
    # Our own configuration only: nothing inherited may point a worker at another broker.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AKMA_NET_", "AKMA_AF_"))}
    env["PYTHONPATH"] = str(h.REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _party_env(
    prefix: str, broker: Any, pki: PkiLayout, name: str, workdir: Path
) -> dict[str, str]:
    paths = pki.party(name)
    return {
        f"{prefix}BROKER__HOST": broker.host,
        f"{prefix}BROKER__PORT": str(broker.port),
        f"{prefix}BROKER__VHOST": broker.vhost,
        f"{prefix}BROKER__IDENTITY": name,
        f"{prefix}BROKER__CA_FILE": str(pki.ca_cert),
        f"{prefix}BROKER__CERT_FILE": str(paths.tls_cert),
        f"{prefix}BROKER__KEY_FILE": str(paths.tls_key),
        f"{prefix}BROKER__RECONNECT_INTERVAL_S": "0.5",
        f"{prefix}SECURITY__KEY_DIR": str(pki.party_dir(name)),
        f"{prefix}SECURITY__TRUST_DIR": str(pki.root),
        f"{prefix}SECURITY__REPLAY_SQLITE_PATH": str(workdir / "replay.sqlite3"),
    }


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_lines(self) -> list[str]:
        return [line for line in self.log_path.read_text().splitlines() if line.strip()]

    def records(self) -> list[dict[str, Any]]:
        """Every log line as JSON; fails the test on the first line that is not JSON."""
        parsed: list[dict[str, Any]] = []
        for line in self.log_lines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise AssertionError(f"{self.name}: log line is not JSON: {line!r}") from None
            assert isinstance(record, dict), line
            parsed.append(record)
        return parsed

    def has_logged(self, msg: str) -> bool:
        return any(f'"msg":"{msg}"' in line for line in self.log_lines())

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.has_logged("ready"):
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode} before ready:\n"
                    + "\n".join(self.log_lines()[-20:])
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready within {READY_TIMEOUT_S} s")
            await asyncio.sleep(0.1)

    async def terminate(self) -> int:
        """SIGTERM, then the exit code within the bound (killed and failed otherwise)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.process.wait, EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.name} did not exit within {EXIT_TIMEOUT_S} s") from None


def _start(name: str, module: str, env: dict[str, str], workdir: Path) -> Worker:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "stderr.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - argv is sys.executable with fixed arguments
            [sys.executable, "-m", module],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Worker(name, process, log_path)


@dataclass
class Deployment:
    network: Worker
    af1: Worker
    af2: Worker
    ua_ports: dict[str, int]
    metrics_port: int
    af1_metrics_port: int

    @property
    def workers(self) -> tuple[Worker, Worker, Worker]:
        return (self.network, self.af1, self.af2)


@pytest.fixture
async def deployment(broker: Any, pki: PkiLayout, tmp_path: Path) -> AsyncIterator[Deployment]:
    # Earlier tests on the shared broker may have left requests behind for a network that is
    # gone; the worker must start from an empty queue for the metric assertions.
    h.purge(h.management(broker, pki), h.REQUEST_QUEUE, inbox_queue(AF1), inbox_queue(AF2))
    master_key = tmp_path / "master.key"
    master_key.write_text(os.urandom(32).hex() + "\n")
    master_key.chmod(0o600)
    metrics_port = _free_port()
    net_dir = tmp_path / "network"
    net_env = _base_env() | _party_env("AKMA_NET_", broker, pki, pki.network, net_dir) | {
        "AKMA_NET_AF_REGISTRY": str(h.REGISTRY),
        "AKMA_NET_MASTER_KEY_FILE": str(master_key),
        "AKMA_NET_CONTEXT_DB": str(net_dir / "contexts.sqlite3"),
        "AKMA_NET_METRICS_PORT": str(metrics_port),
    }
    workers: list[Worker] = [_start("network", "network_side", net_env, net_dir)]
    ua_ports: dict[str, int] = {}
    af1_metrics = _free_port()
    for fqdn in (AF1, AF2):
        ua_ports[fqdn] = _free_port()
        af_dir = tmp_path / fqdn
        af_env = _base_env() | _party_env("AKMA_AF_", broker, pki, fqdn, af_dir) | {
            "AKMA_AF_AF_FQDN": fqdn,
            "AKMA_AF_UA_PORT": str(ua_ports[fqdn]),
            "AKMA_AF_DEMO_REVEAL_KEYS": "false",
            "AKMA_AF_REQUEST_TIMEOUT_S": "3",
        }
        if fqdn == AF1:
            af_env["AKMA_AF_METRICS_PORT"] = str(af1_metrics)
        workers.append(_start(fqdn, "as_side", af_env, af_dir))
    try:
        for worker in workers:
            await worker.wait_ready()
        yield Deployment(workers[0], workers[1], workers[2], ua_ports, metrics_port, af1_metrics)
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def _sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    want = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in metrics.splitlines():
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        got = sorted(part for part in label_text.rstrip("}").split(",") if part)
        if got == want:
            return float(value)
    return 0.0


async def test_workers_serve_the_ue_flow_and_drain_on_sigterm(
    deployment: Deployment, broker: Any, pki: PkiLayout, tmp_path: Path
) -> None:
    ue = UeSimulator(
        supi="imsi-001010000000031", k_ausf=os.urandom(32), realm=REALM, gpsi="msisdn-15550031"
    )
    async with h.ausf(broker, pki, tmp_path / "ausf") as ausf:
        registered = await ausf.register(ue.anchor_key_info())
        assert registered.a_kid == ue.a_kid

    # The UE presents its A-KID to each AF over Ua*; the AF fetches K_AF from the network worker
    # and proves it holds the same key as the UE, without sending the key.
    for fqdn in (AF1, AF2):
        challenge = os.urandom(16)
        request = {"a_kid": ue.a_kid, "challenge": challenge.hex()}
        answer = await ua_request("127.0.0.1", deployment.ua_ports[fqdn], request)
        assert answer["ok"] is True, answer
        assert answer["proof"] == key_proof(ue.k_af(fqdn, UA_TLS13_SHARED_KEY), challenge).hex()
        assert "k_af" not in answer  # demo_reveal_keys is off
        if fqdn == AF1:
            assert (answer["supi"], answer["gpsi"]) == (ue.supi, None)
        else:
            assert (answer["supi"], answer["gpsi"]) == (None, ue.gpsi)

    # An unknown A-KID is a clean "not found" through the whole chain.
    stranger = UeSimulator(supi="imsi-001010000000032", k_ausf=os.urandom(32), realm=REALM)
    refused = await ua_request(
        "127.0.0.1", deployment.ua_ports[AF1], {"a_kid": stranger.a_kid, "challenge": "00"}
    )
    assert refused == {"ok": False, "error": "key_not_found", "detail": stranger.a_kid}

    metrics = await asyncio.to_thread(_scrape, deployment.metrics_port)
    data = "akma.af_key.data"
    assert _sample(metrics, "akma_network_requests_total",
                   request="akma.af_key.request", answer=data) == 2
    assert _sample(metrics, "akma_network_requests_total",
                   request="akma.af_key.request", answer="akma.af_key.not_found") == 1
    assert _sample(metrics, "akma_network_requests_total",
                   request="akma.anchor_key.register", answer="akma.anchor_key.registered") == 1
    assert "akma_network_request_seconds_bucket" in metrics
    af1_metrics = await asyncio.to_thread(_scrape, deployment.af1_metrics_port)
    assert _sample(af1_metrics, "akma_af_key_requests_total", source="network", outcome="ok") == 1

    # Graceful drain: SIGTERM, each worker finishes, logs it and exits 0 within the bound.
    codes = await asyncio.gather(*(w.terminate() for w in deployment.workers))
    assert codes == [0, 0, 0], {w.name: w.log_lines()[-10:] for w in deployment.workers}
    for worker in deployment.workers:
        records = worker.records()  # every line is a JSON object
        messages = [r.get("msg") for r in records]
        assert {"ready", "draining", "stopped"} <= set(messages), (worker.name, messages)
        assert messages.index("draining") < messages.index("stopped")
        assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
        # No key material in any log line (only the network ever holds K_AKMA).
        for line in worker.log_lines():
            assert ue.k_akma.hex() not in line
            assert ue.k_af(AF1, UA_TLS13_SHARED_KEY).hex() not in line
