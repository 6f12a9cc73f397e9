"""Shared load driver for the reliability scenarios: a deployment's files, subscribers, parties
built exactly as the workers build them, and a key-request load with honest bookkeeping.

Generic on purpose: the fault scenarios (``reliability.faults``) and the hostile-input scenarios
(``reliability.hostile``) both drive legitimate traffic with it.

What a request's fate can be (``LoadReport``):
- answered: the first ``get_application_key`` call returned a K_AF equal to the UE's own;
- retried_ok: the first call ended in a clear error (timeout, link down) and a later call,
  made by the driver exactly as an application would, returned the correct K_AF;
- wrong: some call returned a K_AF that differs from the UE's (must never happen);
- failed: no call succeeded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from akma_contract import topology
from akma_contract.identifiers import UA_TLS13_SHARED_KEY, make_af_id
from akma_contract.messages import AkmaAfKeyRequest, decode_body
from as_side.client import AkmaKeyClient
from as_side.errors import AsSideError, KeyRequestTimeoutError
from as_side.service import AfService
from broker_adapter.clock import system_clock_ms
from broker_adapter.envelope import OpenedMessage
from broker_adapter.errors import BrokerAdapterError
from broker_adapter.runtime import SecureParty, SecuritySettings, open_secure_party
from broker_adapter.secure import Reply
from broker_adapter.transport import BrokerSettings
from infra.local_broker import LocalBroker
from infra.management import Management
from infra.pki import PkiLayout, ensure_dev_pki
from network_side.aanf import Aanf, AanfConfig
from network_side.af_registry import AfRegistry
from network_side.context_store import SqliteContextStore
from network_side.nef import Nef
from network_side.node import NetworkNode, start_network_node
from network_side.service import NetworkService
from network_side.ue_sim import UeSimulator

REPO = Path(__file__).resolve().parents[1]
NETWORK = topology.NETWORK_IDENTITY
AUSF = "ausf"
AF1 = "af1.example.com"
AF2 = "af2.example.com"
DEFAULT_AFS = (AF1, AF2)
REALM = "5gc.mnc001.mcc001.3gppnetwork.org"
VHOST = "akma"
DEAD_LETTER_QUEUE = topology.DEAD_LETTER_QUEUE
REQUEST_QUEUE = topology.NETWORK_REQUEST_QUEUE


# ---- a deployment's files ---------------------------------------------------------------------


@dataclass(frozen=True)
class Lab:
    """The files of one scenario run: PKI, AF registry, master key, all under ``root``."""

    root: Path
    pki: PkiLayout
    registry: Path
    master_key_file: Path
    afs: tuple[str, ...]

    @classmethod
    def create(cls, root: Path, afs: Sequence[str] = DEFAULT_AFS) -> Lab:
        root.mkdir(parents=True, exist_ok=True)
        pki = ensure_dev_pki(root / "pki", afs=[*afs, AUSF])
        registry = root / "af-registry.toml"
        registry.write_text(registry_toml(afs), encoding="utf-8")
        master = root / "master.key"
        # Created 0600 from the start: the worker refuses a key file others could read.
        fd = os.open(master, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(32).hex())
        return cls(root, pki, registry, master, tuple(afs))

    def master_key(self) -> bytes:
        return bytes.fromhex(self.master_key_file.read_text().strip())


def registry_toml(
    afs: Sequence[str], *, rate_per_second: float = 1e6, burst: int = 1_000_000
) -> str:
    """An AF registry with every AF internal and a rate limit far above any test load, so that
    the only refusals a scenario can see are the ones it provokes on purpose."""
    lines = [f'ausf_identities = ["{AUSF}"]', ""]
    for af in afs:
        lines += [
            "[[af]]",
            f'identity = "{af}"',
            'kind = "internal"',
            f"rate_per_second = {rate_per_second}",
            f"burst = {burst}",
            f'af_ids = [{{ fqdn = "{af}", ua_protocol_id = "{UA_TLS13_SHARED_KEY.hex()}" }}]',
            "",
        ]
    return "\n".join(lines)


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A private work directory, removed afterwards unless ``AKMA_KEEP_RELIABILITY`` is set
    (then its path is printed, for post-mortems of a failed run)."""
    path = Path(tempfile.mkdtemp(prefix=f"akma-{prefix}-"))
    try:
        yield path
    finally:
        if os.environ.get("AKMA_KEEP_RELIABILITY"):
            print(f"   kept work directory {path}", flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


# ---- brokers ------------------------------------------------------------------------------------


@asynccontextmanager
async def local_node(workdir: Path, pki: PkiLayout) -> AsyncIterator[LocalBroker]:
    """An isolated single node for one scenario; killed (its data is scratch) afterwards."""
    node = LocalBroker(workdir, pki)
    await asyncio.to_thread(node.start)
    try:
        yield node
    finally:
        await asyncio.to_thread(node.kill9)


def management_for(node: LocalBroker) -> Management:
    return Management(node.management_url, node.admin_password, str(node.pki.ca_cert))


def queue_depth(mgmt: Management, queue: str) -> int:
    """Messages in ``queue`` (ready + unacked), as the management API reports them."""
    info = mgmt.queue(VHOST, queue)
    return int(info.get("messages", 0) or 0)


async def settled_depth(
    mgmt: Management, queue: str, *, want: int = 0, timeout_s: float = 12.0
) -> int:
    """The depth of ``queue`` once it reaches ``want`` or ``timeout_s`` passed.

    The management API refreshes queue statistics only every few seconds (5 s by default), so a
    single read right after a burst can show messages that were long consumed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        depth = await asyncio.to_thread(queue_depth, mgmt, queue)
        if depth == want or time.monotonic() > deadline:
            return depth
        await asyncio.sleep(0.5)


async def dead_letter_count(mgmt: Management, *, settle_s: float = 6.0) -> int:
    # Statistics lag by up to one collection interval: wait that long, then read.
    await asyncio.sleep(settle_s)
    return await asyncio.to_thread(queue_depth, mgmt, DEAD_LETTER_QUEUE)


# ---- parties ------------------------------------------------------------------------------------


def broker_settings(
    pki: PkiLayout, name: str, host: str, port: int, **overrides: Any
) -> BrokerSettings:
    paths = pki.party(name)
    values: dict[str, Any] = {
        "host": host,
        "port": port,
        "vhost": VHOST,
        "identity": name,
        "ca_file": pki.ca_cert,
        "cert_file": paths.tls_cert,
        "key_file": paths.tls_key,
        # Reconnect quickly: the scenarios measure recovery, not back-off politeness.
        "reconnect_interval_s": 0.5,
        "heartbeat_s": 10,
    }
    values.update(overrides)
    return BrokerSettings(**values)


def security_settings(
    lab: Lab, name: str, replay_sqlite: Path, **overrides: Any
) -> SecuritySettings:
    values: dict[str, Any] = {
        "key_dir": lab.pki.party_dir(name),
        "trust_dir": lab.pki.root,
        "replay_sqlite_path": replay_sqlite,
    }
    values.update(overrides)
    return SecuritySettings(**values)


# ---- subscribers --------------------------------------------------------------------------------


def make_subscribers(count: int, *, seed: bytes = b"akma-reliability") -> list[UeSimulator]:
    """``count`` UEs with deterministic K_AUSF (reproducible runs, distinct A-KIDs)."""
    ues = []
    for i in range(count):
        k_ausf = hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
        ues.append(
            UeSimulator(
                supi=f"imsi-00101{i:010d}", k_ausf=k_ausf, realm=REALM, gpsi=f"msisdn-1{i:010d}"
            )
        )
    return ues


def register_subscribers(aanf: Aanf, ues: Iterable[UeSimulator]) -> int:
    """Set-up, not load: register the anchor keys the AUSF would have registered."""
    count = 0
    for ue in ues:
        aanf.register_anchor_key(ue.anchor_key_info())
        count += 1
    return count


def seed_context_db(path: Path, master_key: bytes, ues: Iterable[UeSimulator]) -> int:
    """Register ``ues`` straight into a network worker's context database before it starts."""
    store = SqliteContextStore(path, master_key=master_key)
    try:
        return register_subscribers(Aanf(store, system_clock_ms, AanfConfig()), ues)
    finally:
        store.close()


# ---- counting what the network processes ------------------------------------------------------


@dataclass
class ProcessingLog:
    """Every request the network handler finished, by message and by logical request."""

    by_message: Counter[tuple[str, bytes]] = field(default_factory=Counter)
    # (requester, A-KID) of key requests: a second processing of the same logical request,
    # even under a new message id (an application-level retry), shows up here.
    by_request: Counter[tuple[str, str]] = field(default_factory=Counter)

    def record(self, opened: OpenedMessage) -> None:
        self.by_message[(opened.sender, opened.msg_id)] += 1
        if opened.msg_type == AkmaAfKeyRequest.MSG_TYPE:
            body = decode_body(opened.msg_type, opened.body)
            if isinstance(body, AkmaAfKeyRequest):
                self.by_request[(opened.sender, body.a_kid)] += 1

    @property
    def processed(self) -> int:
        return sum(self.by_message.values())

    @property
    def duplicate_messages(self) -> int:
        """Extra processings of one (sender, message id): what the replay guard must prevent."""
        return sum(n - 1 for n in self.by_message.values() if n > 1)

    @property
    def repeated_requests(self) -> int:
        return sum(n - 1 for n in self.by_request.values() if n > 1)


class CountingNetworkService(NetworkService):
    """The network worker's service with a hook that counts each finished handling."""

    def __init__(self, *args: Any, log: ProcessingLog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log

    async def handle(self, opened: OpenedMessage) -> Reply:
        reply = await super().handle(opened)
        # Counted only once the handler has finished: a handling that raised is released and
        # redelivered by design, and is not a processing.
        self.log.record(opened)
        return reply


@dataclass
class InProcessNetwork:
    node: NetworkNode
    log: ProcessingLog

    async def close(self) -> None:
        await self.node.close(drain_timeout_s=5)


@asynccontextmanager
async def inprocess_network(
    lab: Lab,
    broker: BrokerSettings,
    ues: Iterable[UeSimulator],
    *,
    log: ProcessingLog | None = None,
    prefetch: int = 64,
    **security: Any,
) -> AsyncIterator[InProcessNetwork]:
    """The network worker built as ``python -m network_side`` builds it, plus the counting hook."""
    counting = log or ProcessingLog()

    def counting_service(party: SecureParty, nef: Nef, prefetch: int) -> NetworkService:
        return CountingNetworkService(party, nef, prefetch=prefetch, log=counting)

    node = await start_network_node(
        broker,
        security_settings(lab, NETWORK, lab.root / "replay-network.sqlite3", **security),
        store=SqliteContextStore(lab.root / "contexts-inproc.sqlite3", master_key=lab.master_key()),
        registry=AfRegistry.load(lab.registry),
        prefetch=prefetch,
        service_factory=counting_service,
    )
    net = InProcessNetwork(node, counting)
    try:
        register_subscribers(node.aanf, ues)
        yield net
    finally:
        await net.close()


@asynccontextmanager
async def af_service(
    lab: Lab,
    broker: BrokerSettings,
    name: str,
    *,
    timeout_s: float = 5.0,
    attempts: int = 3,
) -> AsyncIterator[AfService]:
    party = await open_secure_party(
        broker, security_settings(lab, name, lab.root / f"replay-{name}.sqlite3")
    )
    service = AfService.build(
        party, af_id=make_af_id(name, UA_TLS13_SHARED_KEY), timeout_s=timeout_s, attempts=attempts
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await party.close()


# ---- the load -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyJob:
    af: str
    ue: UeSimulator

    def expected(self) -> bytes:
        return self.ue.k_af(self.af, UA_TLS13_SHARED_KEY)


def plan_jobs(afs: Sequence[str], ues: Sequence[UeSimulator], count: int) -> list[KeyJob]:
    """``count`` distinct (AF, UE) requests, AFs interleaved, so that no answer can come from an
    AF's cache and each job is exactly one network request."""
    if len(ues) * len(afs) < count:
        raise ValueError(f"{len(ues)} UEs x {len(afs)} AFs cannot give {count} distinct requests")
    return [KeyJob(afs[i % len(afs)], ues[i // len(afs)]) for i in range(count)]


def subscribers_for(count: int, afs: Sequence[str]) -> int:
    return -(-count // len(afs))


@dataclass
class LoadReport:
    load: int = 0
    answered: int = 0
    retried_ok: int = 0
    wrong: int = 0
    failed: int = 0
    first_errors: Counter[str] = field(default_factory=Counter)
    final_errors: Counter[str] = field(default_factory=Counter)
    # Monotonic completion time of every correct answer, to show progress after each fault.
    done_at: list[float] = field(default_factory=list)
    # Monotonic time and code of every failed call, to line errors up with the faults.
    error_at: list[tuple[float, str]] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def completed(self) -> int:
        return self.answered + self.retried_ok + self.wrong + self.failed

    @property
    def lost(self) -> int:
        return self.load - self.answered - self.retried_ok

    def error_span(self, since: float) -> tuple[float, float] | None:
        """First and last failed call, in seconds after ``since`` (None if there was none)."""
        if not self.error_at:
            return None
        times = [t - since for t, _ in self.error_at]
        return round(min(times), 1), round(max(times), 1)

    def answered_after(self, moment: float) -> int:
        return sum(1 for t in self.done_at if t > moment)

    def retryable_error(self, code: str, *, first_call: bool, final: bool) -> None:
        self.error_at.append((time.monotonic(), code))
        if first_call:
            self.first_errors[code] += 1
        if final:
            self.failed += 1
            self.final_errors[code] += 1

    def answer(self, *, correct: bool, first_call: bool) -> None:
        if not correct:
            self.wrong += 1
            return
        self.done_at.append(time.monotonic())
        if first_call:
            self.answered += 1
        else:
            self.retried_ok += 1

    def summary(self) -> str:
        parts = [f"answered {self.answered}/{self.load}", f"ok on retry {self.retried_ok}"]
        if self.wrong:
            parts.append(f"WRONG K_AF {self.wrong}")
        if self.failed:
            parts.append(f"failed {self.failed} ({dict(self.final_errors)})")
        if self.first_errors:
            parts.append(f"first-call errors {dict(self.first_errors)}")
        return ", ".join(parts)


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "code", type(exc).__name__))


# Errors an application sees as "try again": a timeout, or a link that stayed down through the
# transport's own retries. Anything else (refusal, wrong reply) is final.
_RETRYABLE: tuple[type[BaseException], ...] = (KeyRequestTimeoutError, BrokerAdapterError)


class _Pacer:
    """Lets callers start no faster than ``rate_per_s`` (at once when it is None or 0)."""

    def __init__(self, rate_per_s: float | None) -> None:
        self._rate = rate_per_s
        self._lock = asyncio.Lock()
        self._next_start = time.monotonic()

    async def turn(self) -> None:
        if not self._rate:
            return
        async with self._lock:
            wait = self._next_start - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_start = max(self._next_start, time.monotonic()) + 1.0 / self._rate


async def drive(
    clients: Mapping[str, AkmaKeyClient],
    jobs: Sequence[KeyJob],
    *,
    concurrency: int = 64,
    app_retries: int = 3,
    retry_pause_s: float = 1.0,
    rate_per_s: float | None = None,
    report: LoadReport | None = None,
) -> LoadReport:
    """Run ``jobs`` with at most ``concurrency`` in flight (and, with ``rate_per_s``, started no
    faster than that, so that a short load still spans a slow fault); fill ``report``."""
    rep = report or LoadReport()
    rep.load = len(jobs)
    rep.started_at = time.monotonic()
    queue: asyncio.Queue[KeyJob] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def one(job: KeyJob) -> None:
        client = clients[job.af]
        for call in range(app_retries + 1):
            try:
                key = await client.get_application_key(job.ue.a_kid)
            except _RETRYABLE as exc:
                final = call == app_retries
                rep.retryable_error(_error_code(exc), first_call=call == 0, final=final)
                if final:
                    return
                await asyncio.sleep(retry_pause_s)
                continue
            except AsSideError as exc:
                rep.failed += 1
                rep.final_errors[_error_code(exc)] += 1
                return
            rep.answer(correct=key.k_af == job.expected(), first_call=call == 0)
            return

    pacer = _Pacer(rate_per_s)

    async def worker() -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await pacer.turn()
            await one(job)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    rep.finished_at = time.monotonic()
    return rep


async def wait_completed(report: LoadReport, count: int, *, timeout_s: float = 300.0) -> None:
    """Wait until ``count`` requests have finished (the moment to inject the next fault)."""
    deadline = time.monotonic() + timeout_s
    while report.completed < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {report.completed} of {count} requests done in {timeout_s}s")
        await asyncio.sleep(0.02)


# ---- the network worker as a real process -------------------------------------------------------


def network_worker_env(
    lab: Lab,
    host: str,
    port: int,
    *,
    context_db: Path,
    replay: Mapping[str, str],
    prefetch: int = 32,
) -> dict[str, str]:
    """Environment for ``python -m network_side`` (AKMA_NET_*), as an operator would set it.

    ``replay`` holds the SECURITY__REPLAY_* settings, e.g. a shared SQLite path or a Redis URL.
    """
    party = lab.pki.party(NETWORK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKMA_NET_")}
    env.update(
        {
            "AKMA_NET_BROKER__HOST": host,
            "AKMA_NET_BROKER__PORT": str(port),
            "AKMA_NET_BROKER__VHOST": VHOST,
            "AKMA_NET_BROKER__IDENTITY": NETWORK,
            "AKMA_NET_BROKER__CA_FILE": str(lab.pki.ca_cert),
            "AKMA_NET_BROKER__CERT_FILE": str(party.tls_cert),
            "AKMA_NET_BROKER__KEY_FILE": str(party.tls_key),
            "AKMA_NET_BROKER__RECONNECT_INTERVAL_S": "0.5",
            "AKMA_NET_SECURITY__KEY_DIR": str(lab.pki.party_dir(NETWORK)),
            "AKMA_NET_SECURITY__TRUST_DIR": str(lab.pki.root),
            "AKMA_NET_AF_REGISTRY": str(lab.registry),
            "AKMA_NET_MASTER_KEY_FILE": str(lab.master_key_file),
            "AKMA_NET_CONTEXT_DB": str(context_db),
            "AKMA_NET_PREFETCH": str(prefetch),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"AKMA_NET_SECURITY__{k.upper()}": v for k, v in replay.items()})
    return env


class WorkerProcess:
    """One ``python -m <module>`` worker with its JSON log in a file."""

    def __init__(self, label: str, module: str, env: Mapping[str, str], log_path: Path) -> None:
        self.label = label
        self.module = module
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0

    def start(self) -> None:
        self.generation += 1
        # Each run of the worker appends to the same log, so the audit count covers all of them.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - this interpreter and our module
                [sys.executable, "-m", self.module],
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ready_lines(self) -> int:
        if not self.log_path.exists():
            return 0
        return self.log_path.read_bytes().count(b'"msg":"ready"')

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready_lines() >= self.generation:
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
        raise RuntimeError(f"{self.label} did not become ready; log tail:\n{tail}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """Crash it: SIGKILL, no drain, no ack, no claim release."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (drain), then SIGKILL if it hangs; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape_metric(port: int, name: str) -> dict[str, float]:
    """Samples of metric ``name`` from a worker's /metrics, keyed by their label text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            samples[labels] = samples.get(labels, 0.0) + float(value)
    return samples


def audit_records(log_paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Audit records (``akma.audit`` logger) from the workers' JSON-line logs."""
    for path in log_paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if '"akma.audit"' not in line:
                continue
            try:
                entry = json.loads(line)
                # The worker's formatter nests the record under "audit"; a plain formatter
                # leaves the record's JSON text in "msg".
                record = entry.get("audit")
                if not isinstance(record, dict):
                    record = json.loads(entry["msg"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if isinstance(record, dict):
                yield record


def issued_times(log_path: Path) -> dict[tuple[str, str], list[int]]:
    """When (unix ms) each (requester, A-KID) was issued a K_AF by the worker of this log."""
    times: dict[tuple[str, str], list[int]] = {}
    for record in audit_records([log_path]):
        if record.get("event") == "af_key.get" and record.get("outcome") == "issued":
            key = (str(record.get("requester")), str(record.get("a_kid")))
            times.setdefault(key, []).append(int(record.get("ts_ms") or 0))
    return times


def issued_counts(log_paths: Iterable[Path]) -> Counter[tuple[str, str]]:
    """How often each (requester, A-KID) was issued a K_AF, from ``af_key.get issued`` lines."""
    counts: Counter[tuple[str, str]] = Counter()
    for record in audit_records(log_paths):
        if record.get("event") == "af_key.get" and record.get("outcome") == "issued":
            counts[(str(record.get("requester")), str(record.get("a_kid")))] += 1
    return counts
