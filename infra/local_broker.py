"""Start, stop and restart an isolated RabbitMQ node of the installed ``rabbitmq-server``.

The machine may already run a default node (127.0.0.1:5672, plain AMQP). This launcher never
touches it: the node gets its own name, its own HOME (hence its own Erlang cookie, so even a
mistaken ``rabbitmqctl`` call could not reach the default node), its own config, data, log and
plugin files, and explicit free ports for AMQP over TLS, Erlang distribution, management HTTPS
and Prometheus HTTPS. The Debian wrappers in /usr/sbin are avoided because, as root, they switch
to the ``rabbitmq`` user and its cookie.

``rabbitmq-server`` reports success even when boot failed, so readiness is proved by a real
TLS + EXTERNAL AMQP connection with a party certificate that opens the vhost and finds the
network's queue, plus an authenticated HTTPS call to the management API.

A JSON state file in the work directory lets another process (``python -m infra.local_broker
stop``) find and stop the node.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

from akma_contract.topology import request_queue
from infra.broker_config import ENABLED_PLUGINS, ListenerSettings, render_conf
from infra.definitions import VHOST, write_definitions
from infra.endpoint import BrokerEndpoint
from infra.errors import BrokerNotInstalledError, BrokerStartError, BrokerStateError
from infra.pki import PkiLayout, ensure_dev_pki

LOOPBACK = "127.0.0.1"
RABBITMQ_BIN_DIRS = (Path("/usr/lib/rabbitmq/bin"),)
STATE_FILE = "state.json"
DEFAULT_BOOT_TIMEOUT = 90.0

# rabbitmqctl picks its own distribution port in [dist + 10000, dist + 10010], so the node's
# distribution port must stay well below 55535.
_DIST_PORT_RANGE = (20000, 45000)


def find_rabbitmq_bin() -> Path:
    """Return the directory holding the real ``rabbitmq-server`` and ``rabbitmqctl`` scripts."""
    for directory in RABBITMQ_BIN_DIRS:
        if (directory / "rabbitmq-server").is_file() and (directory / "rabbitmqctl").is_file():
            return directory
    # Elsewhere (generic tarball, Homebrew) the scripts on PATH are the real ones.
    found = shutil.which("rabbitmq-server")
    if found and not found.startswith("/usr/sbin/"):
        directory = Path(found).resolve().parent
        if (directory / "rabbitmqctl").is_file():
            return directory
    raise BrokerNotInstalledError(
        "rabbitmq-server is not installed; install it with `apt-get install rabbitmq-server` "
        "(or set AKMA_TEST_AMQP_URL to a TLS broker, or run a Docker engine for testcontainers)"
    )


def _port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Erlang listeners set SO_REUSEADDR, so connections of a stopped node lingering in
        # TIME_WAIT do not block a restart on the same port; the check must judge likewise.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# AMQPS, management and Prometheus take ephemeral ports; Erlang distribution its own range.
_EPHEMERAL_LISTENERS = 3


def _dist_port() -> int:
    for _ in range(200):
        port = random.randrange(*_DIST_PORT_RANGE)  # noqa: S311 - a port to try, not a secret
        if _port_is_free(port) and _port_is_free(port + 10000):
            return port
    raise BrokerStartError("no free Erlang distribution port found")


@dataclass(frozen=True)
class NodePorts:
    amqp: int
    dist: int
    management: int
    prometheus: int

    @classmethod
    def allocate(cls) -> NodePorts:
        taken: set[int] = set()
        ports: list[int] = []
        while len(ports) < _EPHEMERAL_LISTENERS:
            port = _ephemeral_port()
            if port not in taken:
                taken.add(port)
                ports.append(port)
        return cls(amqp=ports[0], dist=_dist_port(), management=ports[1], prometheus=ports[2])

    def all_free(self) -> bool:
        return all(
            _port_is_free(p) for p in (self.amqp, self.dist, self.management, self.prometheus)
        )


def client_ssl_context(pki: PkiLayout, party: str) -> ssl.SSLContext:
    """A verifying TLS client context with ``party``'s certificate (for the readiness probe)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    paths = pki.party(party)
    ctx.load_cert_chain(str(paths.tls_cert), str(paths.tls_key))
    return ctx


async def _amqp_probe(url: str, context: ssl.SSLContext, queue: str, timeout: float) -> None:
    # Imported here so that PKI and config tooling work without the AMQP client installed.
    import aiormq  # noqa: PLC0415

    connection = await asyncio.wait_for(aiormq.connect(url, context=context), timeout)
    try:
        channel = await connection.channel()
        await channel.queue_declare(queue, passive=True)
    finally:
        await connection.close()


def probe_amqp(endpoint: BrokerEndpoint, party: str, timeout: float = 5.0) -> None:
    """Open a TLS + EXTERNAL connection as ``party`` and passively declare the network's queue.

    Runs the client on its own event loop in a worker thread, so it is safe to call from code
    that is itself inside (or next to) a running loop, such as a pytest-asyncio session.
    """
    # A plain TCP connect first: while the listener is not up yet this fails quietly, whereas
    # the AMQP client would log a connection error on every attempt.
    with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
        pass
    ctx = client_ssl_context(endpoint.pki, party)
    queue = request_queue(endpoint.pki.network)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _amqp_probe(endpoint.amqp_url, ctx, queue, timeout)).result()


def probe_management(endpoint: BrokerEndpoint, timeout: float = 5.0) -> dict[str, Any]:
    """GET /api/overview over verified HTTPS as ``admin``; return the decoded JSON."""
    if endpoint.management_url is None:
        raise BrokerStateError("this broker has no management URL")
    ctx = ssl.create_default_context(cafile=str(endpoint.ca))
    token = base64.b64encode(f"admin:{endpoint.admin_password()}".encode()).decode()
    # The node's own https:// management URL, from its endpoint file.
    request = urllib.request.Request(  # noqa: S310
        f"{endpoint.management_url}/api/overview", headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=timeout, context=ctx) as response:  # noqa: S310
        data: dict[str, Any] = json.loads(response.read())
        return data


@dataclass
class _State:
    nodename: str
    ports: NodePorts
    pki_dir: str
    network: str
    afs: list[str]
    pgid: int | None = None
    boot_seconds: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> _State:
        raw = json.loads(text)
        raw["ports"] = NodePorts(**raw["ports"])
        return cls(**raw)


class LocalBroker:
    """An isolated RabbitMQ node under ``workdir`` configured for ``pki`` and ``afs``."""

    def __init__(
        self,
        workdir: Path,
        pki: PkiLayout,
        afs: Sequence[str] | None = None,
        *,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.pki = pki
        self.afs = list(pki.afs if afs is None else afs)
        self.boot_timeout = boot_timeout
        self._bin = find_rabbitmq_bin()
        self._proc: subprocess.Popen[bytes] | None = None
        state = self._load_state()
        if state is not None:
            # Same work directory, same node: keeping the name keeps the data (quorum queues
            # live under MNESIA_BASE/<nodename>) and lets a later process stop it.
            self._state = state
            self._state.pki_dir = str(pki.root)
            self._state.network = pki.network
            self._state.afs = self.afs
        else:
            self._state = _State(
                nodename=f"akma-{os.getpid()}-{secrets.token_hex(3)}@localhost",
                ports=NodePorts.allocate(),
                pki_dir=str(pki.root),
                network=pki.network,
                afs=self.afs,
            )

    # ---- paths and properties -----------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.workdir / STATE_FILE

    @property
    def nodename(self) -> str:
        return self._state.nodename

    @property
    def ports(self) -> NodePorts:
        return self._state.ports

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def amqp_port(self) -> int:
        return self._state.ports.amqp

    @property
    def amqp_url(self) -> str:
        return f"amqps://{self.host}:{self.amqp_port}/{VHOST}?auth=external"

    @property
    def management_url(self) -> str:
        return f"https://{self.host}:{self._state.ports.management}"

    @property
    def prometheus_url(self) -> str:
        return f"https://{self.host}:{self._state.ports.prometheus}/metrics"

    @property
    def admin_password(self) -> str:
        return self.pki.admin_password()

    @property
    def process_group(self) -> int | None:
        """The node's process group (the Erlang VM and its helpers), while it runs."""
        return self._state.pgid

    @property
    def boot_seconds(self) -> float | None:
        """Wall time of the last successful start, from launch to proven readiness."""
        return self._state.boot_seconds

    @property
    def log_file(self) -> Path:
        return self.workdir / "log" / f"{self.nodename}.log"

    @property
    def _pid_file(self) -> Path:
        return self.workdir / "rabbitmq.pid"

    @property
    def _stdout_file(self) -> Path:
        return self.workdir / "log" / "stdout.log"

    def endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint(
            host=self.host,
            port=self.amqp_port,
            vhost=VHOST,
            management_url=self.management_url,
            ca=self.pki.ca_cert,
            pki=self.pki,
        )

    # ---- state ----------------------------------------------------------------------------

    def _load_state(self) -> _State | None:
        if not self.state_file.exists():
            return None
        try:
            return _State.from_json(self.state_file.read_text(encoding="utf-8"))
        except (ValueError, TypeError, KeyError) as exc:
            raise BrokerStateError(f"unreadable state file {self.state_file}: {exc}") from exc

    def _save_state(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(self._state.to_json(), encoding="utf-8")
        os.replace(tmp, self.state_file)

    # ---- environment ----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # Start from the caller's environment without any RABBITMQ_* or ERL_* settings, so a
        # developer's shell cannot redirect this node onto the default node's files.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_", "ERLANG_"))
        }
        w = self.workdir
        env.update(
            HOME=str(w / "home"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_CONFIG_FILE=str(w / "rabbitmq.conf"),
            RABBITMQ_CONFIG_FILES=str(w / "conf.d" / "*.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(w / "advanced.config"),
            RABBITMQ_MNESIA_BASE=str(w / "mnesia"),
            RABBITMQ_LOG_BASE=str(w / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(w / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(w / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(self._pid_file),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(w / "plugins-expand"),
            RABBITMQ_DIST_PORT=str(self.ports.dist),
            # Keep Erlang distribution on loopback, like every other listener of this node.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-kernel inet_dist_use_interface {127,0,0,1} "
                "+sbwt none +sbwtdcpu none +sbwtdio none"
            ),
            RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _write_files(self) -> None:
        w = self.workdir
        for sub in ("home", "conf.d", "mnesia", "log", "plugins-expand"):
            (w / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        cookie = w / "home" / ".erlang.cookie"
        if not cookie.exists():
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(20).upper())
        defs = write_definitions(w / "definitions.json", self.pki, self.afs)
        settings = ListenerSettings(
            amqp_ip=LOOPBACK,
            amqp_port=self.ports.amqp,
            management_ip=LOOPBACK,
            management_port=self.ports.management,
            prometheus_ip=LOOPBACK,
            prometheus_port=self.ports.prometheus,
            cacertfile=str(self.pki.ca_cert.resolve()),
            certfile=str(self.pki.server_cert.resolve()),
            keyfile=str(self.pki.server_key.resolve()),
            definitions=str(defs.resolve()),
        )
        (w / "rabbitmq.conf").write_text(render_conf(settings), encoding="utf-8")
        (w / "advanced.config").write_text("[].\n", encoding="utf-8")
        (w / "rabbitmq-env.conf").write_text("# intentionally empty: all settings via env\n")
        shutil.copyfile(ENABLED_PLUGINS, w / "enabled_plugins")

    # ---- lifecycle ------------------------------------------------------------------------

    def _group_alive(self) -> bool:
        pgid = self._state.pgid
        if pgid is None:
            return False
        if self._proc is not None and self._proc.poll() is not None:
            # Our own child has exited; the rest of its group may still be shutting down.
            pass
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def is_running(self) -> bool:
        return self._group_alive()

    def start(self) -> BrokerEndpoint:
        """Boot the node and return its endpoint once a real TLS+EXTERNAL login works."""
        if self._group_alive():
            raise BrokerStateError(
                f"node {self.nodename} is already running (pgid {self._state.pgid})"
            )
        if not self.ports.all_free():
            # A fresh start after a previous run: ports may have been taken meanwhile. A
            # restart() comes here right after stopping, so it keeps its ports.
            self._state.ports = NodePorts.allocate()
        self._write_files()
        self._pid_file.unlink(missing_ok=True)
        started = time.monotonic()
        stdout = open(self._stdout_file, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - the installed server script, no shell
                [str(self._bin / "rabbitmq-server")],
                env=self._env(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                # Own process group: kill9() and stop() can reach the VM and its helpers,
                # and Ctrl-C in the caller's terminal does not hit the node.
                start_new_session=True,
            )
        finally:
            stdout.close()
        self._state.pgid = self._proc.pid
        self._save_state()
        try:
            self._wait_ready(started)
        except BaseException:
            self._force_stop()
            raise
        self._state.boot_seconds = round(time.monotonic() - started, 2)
        self._save_state()
        return self.endpoint()

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.boot_timeout
        endpoint = self.endpoint()
        party = self.pki.network
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerStartError(
                    f"rabbitmq-server exited with {self._proc.returncode} during boot\n"
                    + self.log_tail()
                )
            try:
                probe_amqp(endpoint, party, timeout=5.0)
                probe_management(endpoint, timeout=5.0)
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last_error = exc
            time.sleep(0.25)
        raise BrokerStartError(
            f"node {self.nodename} not ready after {self.boot_timeout:.0f}s "
            f"(last probe error: {last_error!r})\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self._stdout_file, self.log_file):
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()
                parts.append(f"--- {path} (last {lines} lines) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts) if parts else "(no log written)"

    def _ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - the installed rabbitmqctl, no shell
            [str(self._bin / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self._env(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _wait_group_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None:
                # Reap our child, otherwise it stays a zombie and the group looks alive.
                self._proc.poll()
            if not self._group_alive():
                return True
            time.sleep(0.1)
        return not self._group_alive()

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._state.pgid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._state.pgid, sig)

    def _force_stop(self) -> None:
        self._signal_group(signal.SIGTERM)
        if not self._wait_group_gone(20.0):
            self._signal_group(signal.SIGKILL)
            self._wait_group_gone(10.0)
        self._mark_stopped()

    def _mark_stopped(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5.0)
        self._proc = None
        self._state.pgid = None
        self._save_state()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``); signals only as a last resort."""
        if not self._group_alive():
            self._mark_stopped()
            return
        try:
            result = self._ctl("stop", str(self._pid_file), timeout=timeout)
            clean = result.returncode == 0
        except subprocess.TimeoutExpired:
            clean = False
        if clean and self._wait_group_gone(timeout):
            self._mark_stopped()
            return
        self._force_stop()

    def kill9(self) -> None:
        """Crash the node: SIGKILL to its whole process group, no shutdown of any kind."""
        self._signal_group(signal.SIGKILL)
        self._wait_group_gone(10.0)
        self._mark_stopped()

    def restart(self) -> BrokerEndpoint:
        """Stop (if running) and start again on the same ports and data directory."""
        self.stop()
        ports = self._state.ports
        deadline = time.monotonic() + 30.0
        # The old listeners' sockets can linger for a moment after the VM exits.
        while not ports.all_free() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not ports.all_free():
            raise BrokerStartError(f"ports of {self.nodename} still busy after stop: {ports}")
        return self.start()

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "nodename": self.nodename,
            "running": self._group_alive(),
            "amqp_url": self.amqp_url,
            "management_url": self.management_url,
            "prometheus_url": self.prometheus_url,
            "admin_password_file": str(self.pki.admin_password_file),
            "ca": str(self.pki.ca_cert),
            "ports": asdict(self.ports),
            "boot_seconds": self.boot_seconds,
        }
        if info["running"]:
            try:
                probe_amqp(self.endpoint(), self.pki.network, timeout=5.0)
                info["amqp_ready"] = True
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                info["amqp_ready"] = False
                info["amqp_error"] = repr(exc)
        return info

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- command line --------------------------------------------------------------------------


def _layout_for(args: argparse.Namespace) -> PkiLayout:
    if args.af:
        return ensure_dev_pki(args.pki, afs=args.af, network=args.network)
    if (args.pki / "parties").is_dir():
        return PkiLayout.from_dir(args.pki, network=args.network)
    raise BrokerStateError(f"no PKI in {args.pki}: pass --af NAME (repeatable) to create one")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local_broker",
        description="Run an isolated TLS RabbitMQ node for the AKMA dev setup.",
    )
    parser.add_argument("command", choices=("start", "stop", "status", "restart"))
    parser.add_argument("--dir", type=Path, default=Path("var/broker"), help="node work dir")
    parser.add_argument("--pki", type=Path, default=Path("var/pki"), help="PKI directory")
    parser.add_argument("--network", default="network")
    parser.add_argument("--af", action="append", default=[], help="AF FQDN (repeatable)")
    args = parser.parse_args(argv)

    if args.command == "stop":
        if not (args.dir / STATE_FILE).exists():
            print(f"no broker state in {args.dir}; nothing to stop")
            return 0
        layout = PkiLayout.from_dir(args.pki, network=args.network)
        LocalBroker(args.dir, layout).stop()
        print("broker stopped")
        return 0

    layout = _layout_for(args)
    broker = LocalBroker(args.dir, layout, args.af or None)
    if args.command == "status":
        print(json.dumps(broker.status(), indent=2))
        return 0 if broker.is_running() else 3
    if args.command == "restart":
        broker.restart()
    elif broker.is_running():
        print(f"already running: {broker.amqp_url}")
        return 0
    else:
        broker.start()
    print(f"broker ready in {broker.boot_seconds}s")
    print(f"  AMQP:       {broker.amqp_url}")
    print(
        f"  management: {broker.management_url}  (user admin, password in "
        f"{layout.admin_password_file})"
    )
    print(f"  CA:         {layout.ca_cert}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
