"""What every benchmark part shares: the bench deployment (PKI, broker, registry), how a party's
settings are built for a child process, and the JSON-lines protocol spoken with child processes.

Child processes are started with ``python -m bench.roles <role> <json config>``; they print one
JSON object per line on stdout (``{"event": "ready"}``, then ``{"event": "result", ...}``) and log
to a file. Timestamps crossing the process boundary are ``time.time()`` (one machine, one clock).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cryptography

from akma_contract import topology
from broker_adapter.runtime import SecuritySettings
from broker_adapter.transport import BrokerSettings
from infra.endpoint import BrokerEndpoint
from infra.management import Management
from infra.pki import PkiLayout

REPO = Path(__file__).resolve().parents[1]
NETWORK = topology.NETWORK_IDENTITY
AF = "af1.example.com"
AF_FQDN = AF
REQUEST_EXCHANGE = topology.REQUEST_EXCHANGE
REPLY_EXCHANGE = topology.REPLY_EXCHANGE
DEAD_LETTERS = topology.DEAD_LETTER_EXCHANGE
REQUEST_QUEUE = topology.NETWORK_REQUEST_QUEUE
AF_INBOX = topology.inbox_queue(AF)
VHOST = "akma"
BODY_BYTES = 200

# The example registry throttles af1 to 50 requests/s, which would measure the rate limiter, not
# the messaging; the bench registry is the same AF with a limit far above anything reachable.
BENCH_REGISTRY = """\
ausf_identities = ["ausf"]

[[af]]
identity = "af1.example.com"
kind = "internal"
rate_per_second = 1000000.0
burst = 1000000
af_ids = [{ fqdn = "af1.example.com", ua_protocol_id = "0100000007" }]
"""


class BenchError(Exception):
    """Root of the bench harness's own failures (a child process that died, a timeout)."""

    code = "bench_error"


class ChildFailedError(BenchError):
    code = "child_failed"


@dataclass(frozen=True)
class Deployment:
    """A running bench broker with its PKI and a scratch directory."""

    endpoint: BrokerEndpoint
    pki: PkiLayout
    work: Path
    # The broker node's process group, when the bench started the node itself: its CPU time is
    # read from /proc so that every figure can say where the machine's CPU went.
    broker_pgid: int | None = None

    def broker_cpu_s(self) -> float | None:
        return group_cpu_seconds(self.broker_pgid) if self.broker_pgid is not None else None

    def management(self) -> Management:
        return Management(
            self.endpoint.management_url or "", self.pki.admin_password(), str(self.pki.ca_cert)
        )

    def broker_settings(self, name: str) -> BrokerSettings:
        paths = self.pki.party(name)
        return BrokerSettings(
            host=self.endpoint.host,
            port=self.endpoint.port,
            vhost=self.endpoint.vhost,
            identity=name,
            ca_file=self.pki.ca_cert,
            cert_file=paths.tls_cert,
            key_file=paths.tls_key,
        )

    def security_settings(self, name: str, **overrides: Any) -> SecuritySettings:
        values: dict[str, Any] = {
            "key_dir": self.pki.party_dir(name),
            "trust_dir": self.pki.root,
            "replay_store": "memory",
        }
        values.update(overrides)
        return SecuritySettings(**values)

    def party_config(self, name: str, **security: Any) -> dict[str, Any]:
        """JSON-able settings of one party, for a child process."""
        return {
            "broker": self.broker_settings(name).model_dump(mode="json"),
            "security": self.security_settings(name, **security).model_dump(mode="json"),
        }

    def env_for_worker(self, prefix: str, name: str, **security: Any) -> dict[str, str]:
        """Environment for a real worker (``python -m network_side``) of party ``name``."""
        env = dict(os.environ)
        for key, value in self.broker_settings(name).model_dump(mode="json").items():
            if value is not None:
                env[f"{prefix}BROKER__{key.upper()}"] = str(value)
        sec = self.security_settings(name, **security).model_dump(mode="json")
        for key, value in sec.items():
            if value is None:
                continue
            text = json.dumps(value) if isinstance(value, list) else str(value)
            env[f"{prefix}SECURITY__{key.upper()}"] = text
        return env


def pid_cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of one live process (Linux /proc), None once it is gone."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float | None:
    """User+system CPU seconds of every live process in group ``pgid`` (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    found = False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after the last ")".
        fields = stat.rpartition(")")[2].split()
        # After the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12).
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
            found = True
    return total / tick if found else None


def machine_info() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "cryptography": cryptography.__version__,
        "loadavg": [round(x, 2) for x in load],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


class Child:
    """A child process speaking the JSON-lines protocol on stdout."""

    def __init__(
        self, label: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ):
        self.label = label
        self.log_path = log_path
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - argv is this interpreter or py-spy
                argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        if self.proc.stdout is None:
            raise ChildFailedError(f"{label}: started without a stdout pipe")
        self._out: IO[bytes] = self.proc.stdout

    @classmethod
    def role(cls, label: str, role: str, config: dict[str, Any], work: Path) -> Child:
        argv = [sys.executable, "-m", "bench.roles", role, json.dumps(config)]
        profile_dir = os.environ.get("AKMA_BENCH_PROFILE_DIR")
        if profile_dir:
            # Sampling profile of every child (py-spy, collapsed stacks), for bench/profile.py.
            spy = Path(sys.executable).with_name("py-spy")
            out = Path(profile_dir) / f"{label}.txt"
            argv = [str(spy), "record", "--format", "raw", "--rate", "250", "--nonblocking",
                    "--threads", "-o", str(out), "--", *argv]
        return cls(label, argv, work / f"{label}.log")

    def cpu_s(self) -> float:
        """CPU seconds the child has used so far (0 once it has exited)."""
        return pid_cpu_seconds(self.proc.pid) or 0.0

    def event(self, name: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """Read lines until the event ``name`` arrives; fail if the child exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self._out.readline()
            if not line:
                code = self.proc.wait(timeout=10)
                raise ChildFailedError(
                    f"{self.label} exited ({code}) before {name!r}; log tail:\n{self.log_tail()}"
                )
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("event") == name:
                return msg
        raise ChildFailedError(f"{self.label}: no {name!r} within {timeout_s}s")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0, *, grace_s: float = 0.0) -> int:
        """Terminate the child; ``grace_s`` first lets one that is finishing exit by itself."""
        if grace_s > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


def emit(event: str, **fields: Any) -> None:
    """Child side of the protocol: one JSON line on stdout."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()
