"""The broker itself enforces TLS client authentication, per-party permissions and user ids.

These tests talk to the session broker directly (raw TLS sockets and aiormq), not through
``broker_adapter``, so they prove what the broker configuration in ``infra/`` guarantees on its
own, whatever the client library does. Every refusal has a positive control next to it, so a
broken harness cannot pass a refusal test by failing for the wrong reason.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiormq
import aiormq.abc
import pytest
from pamqp import commands as spec

from akma_contract.topology import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    NETWORK_REQUEST_QUEUE,
    NETWORK_ROUTING_KEY,
    REPLY_EXCHANGE,
    REQUEST_EXCHANGE,
    inbox_queue,
)
from infra.endpoint import BrokerEndpoint
from infra.local_broker import LocalBroker
from infra.pki import PkiLayout, ensure_dev_pki
from tests.conftest import _unavailable

pytestmark = pytest.mark.broker

AF1 = "af1.example.com"
AF2 = "af2.example.com"
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


# ---- helpers ---------------------------------------------------------------------------------


def tls_context(
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context that always verifies the broker certificate against ``ca``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    if version is not None:
        with warnings.catch_warnings():
            # Old versions are deprecated in Python; we use them on purpose, to be refused.
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
        # OpenSSL 3 refuses to even offer TLS 1.1 at its default security level; level 0 makes
        # the client really send a TLS 1.1 hello, so the refusal seen is the broker's.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def party_context(pki: PkiLayout, party: str, **kwargs: ssl.TLSVersion) -> ssl.SSLContext:
    paths = pki.party(party)
    return tls_context(pki.ca_cert, paths.tls_cert, paths.tls_key, **kwargs)


def amqp_greeting(broker: BrokerEndpoint, ctx: ssl.SSLContext) -> bytes:
    """Open TLS, send the AMQP 0-9-1 header and return the first 7 bytes the broker answers.

    The broker answers an accepted client with a Connection.Start method frame (type 1,
    channel 0). A refused client gets a TLS alert or a closed connection: ``ssl.SSLError``.
    """
    with (
        socket.create_connection((broker.host, broker.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=broker.host) as tls,
    ):
        tls.sendall(AMQP_HEADER)
        data = b""
        while len(data) < 7:
            chunk = tls.recv(7 - len(data))
            if not chunk:
                break
            data += chunk
        return data


def assert_connection_start(frame: bytes) -> None:
    assert frame[:3] == b"\x01\x00\x00", f"expected a method frame on channel 0, got {frame!r}"


async def connect(broker: BrokerEndpoint, party: str) -> aiormq.abc.AbstractConnection:
    return await aiormq.connect(broker.amqp_url, context=party_context(broker.pki, party))


@pytest.fixture
async def af1(broker: BrokerEndpoint) -> AsyncIterator[aiormq.abc.AbstractConnection]:
    conn = await connect(broker, AF1)
    yield conn
    await conn.close()


@pytest.fixture
async def network(broker: BrokerEndpoint) -> AsyncIterator[aiormq.abc.AbstractConnection]:
    conn = await connect(broker, broker.pki.network)
    yield conn
    await conn.close()


# ---- TLS: who may connect at all ------------------------------------------------------------


@pytest.mark.parametrize("version", [None, ssl.TLSVersion.TLSv1_2], ids=["tls-default", "tls1.2"])
def test_party_certificate_is_accepted(
    broker: BrokerEndpoint, version: ssl.TLSVersion | None
) -> None:
    ctx = (
        party_context(broker.pki, AF1)
        if version is None
        else party_context(broker.pki, AF1, version=version)
    )
    assert_connection_start(amqp_greeting(broker, ctx))


@pytest.mark.parametrize("version", [None, ssl.TLSVersion.TLSv1_2], ids=["tls-default", "tls1.2"])
def test_client_without_certificate_is_refused(
    broker: BrokerEndpoint, version: ssl.TLSVersion | None
) -> None:
    ctx = tls_context(broker.pki.ca_cert, version=version)
    with pytest.raises(ssl.SSLError):
        amqp_greeting(broker, ctx)


def test_certificate_from_another_ca_is_refused(
    broker: BrokerEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Same party name, same layout, but issued by a CA the broker has never seen.
    foreign = ensure_dev_pki(tmp_path_factory.mktemp("foreign-pki"), afs=[AF1])
    paths = foreign.party(AF1)
    ctx = tls_context(broker.pki.ca_cert, paths.tls_cert, paths.tls_key)
    with pytest.raises(ssl.SSLError):
        amqp_greeting(broker, ctx)


def test_tls_1_1_is_refused_by_the_broker(broker: BrokerEndpoint) -> None:
    ctx = party_context(broker.pki, AF1, version=ssl.TLSVersion.TLSv1_1)
    with pytest.raises(ssl.SSLError) as refused:
        amqp_greeting(broker, ctx)
    # The alert comes from the broker: the client did offer TLS 1.1 and was told no.
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


# ---- permissions: what an AF may touch ---------------------------------------------------------


async def test_af_consumes_its_own_inbox(af1: aiormq.abc.AbstractConnection) -> None:
    channel = await af1.channel()
    ok = await channel.basic_consume(inbox_queue(AF1), lambda _m: None)  # type: ignore[arg-type, return-value]
    assert ok.consumer_tag is not None
    await channel.basic_cancel(ok.consumer_tag)


@pytest.mark.parametrize("queue", [NETWORK_REQUEST_QUEUE, inbox_queue(AF2), DEAD_LETTER_QUEUE])
async def test_af_cannot_consume_other_queues(
    af1: aiormq.abc.AbstractConnection, queue: str
) -> None:
    channel = await af1.channel()
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as refused:
        await channel.basic_consume(queue, lambda _m: None)  # type: ignore[arg-type, return-value]
    assert str(refused.value.args[0]).startswith("ACCESS_REFUSED")


async def test_network_cannot_consume_an_af_inbox(
    network: aiormq.abc.AbstractConnection,
) -> None:
    channel = await network.channel()
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await channel.basic_consume(inbox_queue(AF1), lambda _m: None)  # type: ignore[arg-type, return-value]


async def test_af_may_declare_queues_under_its_own_prefix(
    af1: aiormq.abc.AbstractConnection,
) -> None:
    channel = await af1.channel()
    name = f"af.{AF1}.reply-{uuid.uuid4().hex}"
    ok = await channel.queue_declare(name, exclusive=True, auto_delete=True)
    assert ok.queue == name
    await channel.queue_delete(name)


@pytest.mark.parametrize(
    "queue",
    [
        f"af.{AF2}.stolen",  # another AF's prefix
        f"af.{AF1}x.inbox",  # prefix look-alike: the dot after the name is required
        f"{NETWORK_REQUEST_QUEUE}.copy",
        "free-for-all",
    ],
)
async def test_af_cannot_declare_queues_outside_its_prefix(
    af1: aiormq.abc.AbstractConnection, queue: str
) -> None:
    channel = await af1.channel()
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as refused:
        await channel.queue_declare(queue, exclusive=True, auto_delete=True)
    assert str(refused.value.args[0]).startswith("ACCESS_REFUSED")


async def test_af_cannot_bind_its_queue_to_the_replies_exchange(
    af1: aiormq.abc.AbstractConnection,
) -> None:
    # Binding a queue of its own to akma.replies with AF2's key would copy AF2's responses.
    channel = await af1.channel()
    name = f"af.{AF1}.tap-{uuid.uuid4().hex}"
    await channel.queue_declare(name, exclusive=True, auto_delete=True)
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await channel.queue_bind(name, REPLY_EXCHANGE, routing_key=AF2)


async def test_af_cannot_publish_to_the_replies_exchange(
    af1: aiormq.abc.AbstractConnection,
) -> None:
    channel = await af1.channel(publisher_confirms=True)
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as refused:
        await channel.basic_publish(
            b"forged response",
            exchange=REPLY_EXCHANGE,
            routing_key=AF2,
            properties=spec.Basic.Properties(user_id=AF1),
        )
    assert str(refused.value.args[0]).startswith("ACCESS_REFUSED")


# ---- validated user_id ---------------------------------------------------------------------


async def _take_from_network_queue(
    network: aiormq.abc.AbstractConnection, marker: str
) -> aiormq.abc.DeliveredMessage | None:
    """Fetch our marked message from network.requests and ack it, leaving others in place."""
    channel = await network.channel()
    try:
        for _ in range(100):
            message = await channel.basic_get(NETWORK_REQUEST_QUEUE, no_ack=False)
            if message.delivery_tag is None:
                return None
            if message.header.properties.message_id == marker:
                await channel.basic_ack(message.delivery_tag)
                return message
            await channel.basic_nack(message.delivery_tag, requeue=True)
        return None
    finally:
        await channel.close()


async def test_publish_with_own_user_id_is_accepted(
    af1: aiormq.abc.AbstractConnection, network: aiormq.abc.AbstractConnection
) -> None:
    channel = await af1.channel(publisher_confirms=True)
    marker = uuid.uuid4().hex
    confirmation = await channel.basic_publish(
        b"ciphertext",
        exchange=REQUEST_EXCHANGE,
        routing_key=NETWORK_ROUTING_KEY,
        mandatory=True,
        properties=spec.Basic.Properties(user_id=AF1, message_id=marker),
    )
    assert isinstance(confirmation, spec.Basic.Ack)
    delivered = await _take_from_network_queue(network, marker)
    assert delivered is not None
    assert delivered.header.properties.user_id == AF1


@pytest.mark.parametrize("claimed", [AF2, "network", "admin"])
async def test_publish_with_another_partys_user_id_is_refused(
    broker: BrokerEndpoint,
    af1: aiormq.abc.AbstractConnection,
    network: aiormq.abc.AbstractConnection,
    claimed: str,
) -> None:
    channel = await af1.channel(publisher_confirms=True)
    marker = uuid.uuid4().hex
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as refused:
        await channel.basic_publish(
            b"ciphertext",
            exchange=REQUEST_EXCHANGE,
            routing_key=NETWORK_ROUTING_KEY,
            mandatory=True,
            properties=spec.Basic.Properties(user_id=claimed, message_id=marker),
        )
    assert str(refused.value.args[0]).startswith("PRECONDITION_FAILED")
    assert await _take_from_network_queue(network, marker) is None


# ---- management API ------------------------------------------------------------------------


def _management_get(broker: BrokerEndpoint, path: str, password: str) -> tuple[int, bytes]:
    assert broker.management_url is not None
    ctx = ssl.create_default_context(cafile=str(broker.ca))
    token = base64.b64encode(f"admin:{password}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - https URL of the test broker
        broker.management_url + path, headers={"Authorization": f"Basic {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=ctx) as response:  # noqa: S310 - https URL of the test broker
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_management_api_over_https_for_admin(broker: BrokerEndpoint) -> None:
    if broker.management_url is None:
        # Only an external broker given without AKMA_TEST_MANAGEMENT_URL lands here; the
        # broker we start ourselves always has one, so under CI this must not pass silently.
        _unavailable("this broker endpoint has no management URL (set AKMA_TEST_MANAGEMENT_URL)")
    status, body = _management_get(broker, "/api/whoami", broker.admin_password())
    assert status == 200
    assert json.loads(body)["name"] == "admin"
    status, body = _management_get(broker, "/api/queues/akma", broker.admin_password())
    assert status == 200
    queues = {q["name"]: q for q in json.loads(body)}
    assert queues[NETWORK_REQUEST_QUEUE]["type"] == "quorum"
    assert queues[DEAD_LETTER_QUEUE]["type"] == "quorum"
    status, body = _management_get(
        broker, "/api/policies/akma/akma-queues", broker.admin_password()
    )
    assert status == 200
    policy = json.loads(body)
    assert policy["definition"] == {
        "dead-letter-exchange": DEAD_LETTER_EXCHANGE, "delivery-limit": 5
    }
    # The policy covers the request and inbox queues but never the dead-letter queue itself,
    # so a dead letter cannot be dead-lettered again. (Per-queue "policy" fields appear only
    # once the management statistics have been collected, so the pattern is checked here.)
    pattern = re.compile(policy["pattern"])
    assert pattern.search(NETWORK_REQUEST_QUEUE) and pattern.search(inbox_queue(AF1))
    assert not pattern.search(DEAD_LETTER_QUEUE)


def test_management_api_refuses_a_wrong_password(broker: BrokerEndpoint) -> None:
    if broker.management_url is None:
        # Only an external broker given without AKMA_TEST_MANAGEMENT_URL lands here; the
        # broker we start ourselves always has one, so under CI this must not pass silently.
        _unavailable("this broker endpoint has no management URL (set AKMA_TEST_MANAGEMENT_URL)")
    status, _ = _management_get(broker, "/api/whoami", "not-the-password")
    assert status == 401


def test_management_api_refuses_party_users(broker: BrokerEndpoint) -> None:
    # Party users have no password at all, so even an empty one must not log in.
    if broker.management_url is None:
        # Only an external broker given without AKMA_TEST_MANAGEMENT_URL lands here; the
        # broker we start ourselves always has one, so under CI this must not pass silently.
        _unavailable("this broker endpoint has no management URL (set AKMA_TEST_MANAGEMENT_URL)")
    assert broker.management_url.startswith("https://")
    ctx = ssl.create_default_context(cafile=str(broker.ca))
    token = base64.b64encode(f"{AF1}:".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - https URL of the test broker
        broker.management_url + "/api/whoami", headers={"Authorization": f"Basic {token}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10, context=ctx)  # noqa: S310 - https URL of the test broker
    assert refused.value.code == 401


# ---- node crash and restart (local launcher) -------------------------------------------------


async def test_crashed_node_restarts_on_same_port_with_its_messages(
    broker: BrokerEndpoint, broker_node: LocalBroker
) -> None:
    marker = uuid.uuid4().hex
    publisher = await connect(broker, AF1)
    channel = await publisher.channel(publisher_confirms=True)
    confirmation = await channel.basic_publish(
        b"survives a crash",
        exchange=REQUEST_EXCHANGE,
        routing_key=NETWORK_ROUTING_KEY,
        mandatory=True,
        properties=spec.Basic.Properties(user_id=AF1, message_id=marker, delivery_mode=2),
    )
    assert isinstance(confirmation, spec.Basic.Ack)
    await publisher.close()

    broker_node.kill9()
    assert not broker_node.is_running()
    endpoint = broker_node.restart()
    assert (endpoint.host, endpoint.port) == (broker.host, broker.port)

    # A confirmed message in a quorum queue is on disk: it outlives kill -9.
    network = await connect(broker, broker.pki.network)
    try:
        delivered = await _take_from_network_queue(network, marker)
    finally:
        await network.close()
    assert delivered is not None
    assert delivered.body == b"survives a crash"
