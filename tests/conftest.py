"""Session fixtures shared by every test tier: the dev PKI and one real TLS broker.

Broker selection, in order (``AKMA_TEST_BROKER=url|docker|local`` forces one):

1. ``AKMA_TEST_AMQP_URL`` (``amqps://host:port/vhost``): an already running broker configured with
   ``infra/`` and trusting the PKI in ``AKMA_TEST_PKI_DIR`` (required with it);
   ``AKMA_TEST_MANAGEMENT_URL`` optionally names its management API.
2. testcontainers' RabbitMQ, when a Docker engine answers (image ``AKMA_TEST_RABBITMQ_IMAGE``,
   default ``rabbitmq:3.13-management``), with the same config, definitions and certificates.
3. The local launcher (``infra.local_broker``), an isolated node of the installed rabbitmq-server.

If none is available, broker tests are skipped, except under ``CI=true`` where the run fails:
CI must never pass by skipping the tests that prove the security properties.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from infra.broker_config import (
    CONTAINER_AMQPS_PORT,
    CONTAINER_CONF_DIR,
    CONTAINER_MANAGEMENT_PORT,
    stage_container_config,
)
from infra.endpoint import BrokerEndpoint
from infra.errors import BrokerNotInstalledError
from infra.local_broker import LocalBroker, probe_amqp
from infra.pki import PkiLayout, ensure_dev_pki

TEST_AFS = ("af1.example.com", "af2.example.com", "af3.example.com", "ausf")
DEFAULT_IMAGE = "rabbitmq:3.13-management"

# Filled by the broker fixture and shown at the end of the run (how long the broker took).
_BROKER_REPORT: list[str] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(message: str) -> None:
    """Fail under CI, skip elsewhere; both with a message that says what to do."""
    if _in_ci():
        pytest.fail(f"CI=true and no broker: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    """The dev PKI: a fresh one per session, or the one an external broker trusts."""
    external = os.environ.get("AKMA_TEST_PKI_DIR")
    if external:
        return PkiLayout.from_dir(Path(external))
    return ensure_dev_pki(tmp_path_factory.mktemp("pki"), afs=TEST_AFS)


@dataclass
class BrokerRuntime:
    """What the session started (if anything), so fixtures can restart or stop it."""

    endpoint: BrokerEndpoint
    kind: str  # "url", "docker" or "local"
    local: LocalBroker | None = None
    container: Any = None


def _from_url(pki: PkiLayout) -> BrokerRuntime:
    url = os.environ["AKMA_TEST_AMQP_URL"]
    if not os.environ.get("AKMA_TEST_PKI_DIR"):
        pytest.fail("AKMA_TEST_AMQP_URL needs AKMA_TEST_PKI_DIR (the PKI that broker trusts)")
    parts = urlsplit(url)
    if parts.scheme != "amqps" or parts.hostname is None:
        pytest.fail(f"AKMA_TEST_AMQP_URL must be amqps://host:port/vhost, got {url!r}")
    endpoint = BrokerEndpoint(
        host=parts.hostname,
        port=parts.port or 5671,
        vhost=parts.path.lstrip("/") or "akma",
        management_url=os.environ.get("AKMA_TEST_MANAGEMENT_URL") or None,
        ca=pki.ca_cert,
        pki=pki,
    )
    return BrokerRuntime(endpoint, "url")


def _docker_engine_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # noqa: PLC0415 - optional dependency

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no client library, no socket, no engine: all "no"
        return False


def _from_docker(pki: PkiLayout, workdir: Path) -> BrokerRuntime | None:
    """Start the broker in a container; None if Docker or testcontainers cannot be used."""
    if not _docker_engine_answers():
        return None
    try:
        # Optional dependencies: without them the broker comes from elsewhere.
        from docker.errors import DockerException  # type: ignore[import-untyped]  # noqa: PLC0415
        from testcontainers.community.rabbitmq import RabbitMqContainer  # noqa: PLC0415
    except ImportError:
        return None

    class TlsRabbitMqContainer(RabbitMqContainer):
        # The stock probe logs in with a password on plain port 5672, which this broker
        # does not have; readiness is checked below with a real TLS + EXTERNAL login.
        def readiness_probe(self) -> bool:
            return True

    staged = stage_container_config(pki, workdir)
    try:
        container = TlsRabbitMqContainer(
            os.environ.get("AKMA_TEST_RABBITMQ_IMAGE", DEFAULT_IMAGE), port=CONTAINER_AMQPS_PORT
        )
    except DockerException:
        return None
    # The stock class passes the port and a default user to the image as environment; the
    # config file is the only source of listeners and the definitions the only source of users.
    for key in (
        "RABBITMQ_NODE_PORT",
        "RABBITMQ_DEFAULT_USER",
        "RABBITMQ_DEFAULT_PASS",
        "RABBITMQ_DEFAULT_VHOST",
    ):
        container.env.pop(key, None)
    container.with_exposed_ports(CONTAINER_MANAGEMENT_PORT)
    container.with_volume_mapping(str(staged / "conf.d"), CONTAINER_CONF_DIR, "ro")
    container.with_volume_mapping(
        str(staged / "enabled_plugins"), "/etc/rabbitmq/enabled_plugins", "ro"
    )
    try:
        container.start()
    except DockerException:
        return None
    host = container.get_container_host_ip()
    endpoint = BrokerEndpoint(
        host=host,
        port=int(container.get_exposed_port(CONTAINER_AMQPS_PORT)),
        vhost="akma",
        management_url=f"https://{host}:{container.get_exposed_port(CONTAINER_MANAGEMENT_PORT)}",
        ca=pki.ca_cert,
        pki=pki,
    )
    started = time.monotonic()
    deadline = started + 120
    while True:
        try:
            probe_amqp(endpoint, pki.network)
            break
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            if time.monotonic() > deadline:
                logs = b"".join(container.get_logs()).decode(errors="replace")[-4000:]
                container.stop()
                pytest.fail(f"container broker not ready: {exc!r}\n{logs}")
            time.sleep(0.5)
    _BROKER_REPORT.append(
        f"container broker ready {time.monotonic() - started:.1f}s after start "
        f"({endpoint.amqp_url})"
    )
    return BrokerRuntime(endpoint, "docker", container=container)


def _from_local(pki: PkiLayout, workdir: Path) -> BrokerRuntime | None:
    try:
        node = LocalBroker(workdir, pki)
    except BrokerNotInstalledError:
        return None
    node.start()
    _BROKER_REPORT.append(
        f"local broker node {node.nodename} ready in {node.boot_seconds}s "
        f"({node.amqp_url}, management {node.management_url})"
    )
    return BrokerRuntime(node.endpoint(), "local", local=node)


@pytest.fixture(scope="session")
def broker_runtime(
    pki: PkiLayout, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerRuntime]:
    forced = os.environ.get("AKMA_TEST_BROKER", "").lower()
    if forced == "url" or (not forced and os.environ.get("AKMA_TEST_AMQP_URL")):
        yield _from_url(pki)
        return
    runtime: BrokerRuntime | None = None
    if forced in ("", "docker"):
        runtime = _from_docker(pki, tmp_path_factory.mktemp("broker-docker"))
        if runtime is None and forced == "docker":
            _unavailable("AKMA_TEST_BROKER=docker but no Docker engine answers")
    if runtime is None and forced in ("", "local"):
        runtime = _from_local(pki, tmp_path_factory.mktemp("broker-local"))
    if runtime is None:
        _unavailable(
            "no TLS broker available: install RabbitMQ (`apt-get install rabbitmq-server`), "
            "run a Docker engine, or set AKMA_TEST_AMQP_URL and AKMA_TEST_PKI_DIR"
        )
        return
    try:
        yield runtime
    finally:
        if runtime.local is not None:
            runtime.local.stop()
        if runtime.container is not None:
            runtime.container.stop()


@pytest.fixture(scope="session")
def broker(broker_runtime: BrokerRuntime) -> BrokerEndpoint:
    """The session's TLS broker (certificate login, definitions from ``infra``)."""
    return broker_runtime.endpoint


@pytest.fixture
def broker_node(broker_runtime: BrokerRuntime) -> Iterator[LocalBroker]:
    """The local broker node itself, for tests that restart or crash it.

    Only the local launcher can do that here. After the test the node is brought back if the
    test left it down, so later tests still find a broker.
    """
    node = broker_runtime.local
    if node is None:
        message = f"needs the local broker launcher, the session broker is {broker_runtime.kind!r}"
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    yield node
    if not node.is_running():
        node.start()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _BROKER_REPORT:
        terminalreporter.write_line(line)
