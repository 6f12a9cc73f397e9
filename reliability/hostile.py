"""Attack scenarios of issue 5: hostile input through the broker, abuse by a legitimate AF, fuzzing.

Each scenario runs the real network worker (``NetworkService`` over ``open_secure_party``) and
real AF parties against a real TLS broker, in one process so that the checks can look inside:

- ``hostile_input``: ``scale.hostile`` hostile messages (``reliability.attacker``) published by
  af1, af2 and af3 with their valid broker certificates, mixed into legitimate key requests.
  Every message must end as its expected verdict: dead-lettered with the exact reason (read back
  from ``akma.dead-letters`` through the management API, matched by message id), acked as a
  duplicate without reprocessing, or (authentic but invalid bodies) answered "invalid_request"
  without reaching the NEF. The metrics must count each reason exactly and nothing hostile may
  reach the NEF.
- ``legit_af_abuse``: an authenticated AF reads others' queues, forges ``user_id``, floods past
  its rate limit and replays captured requests; each attempt is refused and leaves a log line.
- ``fuzzing``: ``reliability.fuzz`` against the envelope decoder and the message models.

``SCENARIOS`` maps names to ``async def scenario(scale) -> ScenarioResult`` (``scripts/soak.py``);
they start their own PKI and local broker. The tests call the ``run_*`` functions with the
session broker instead.

Accounting: ``hostile_tried`` counts hostile inputs; ``forgeries_accepted`` counts hostile
inputs that reached a handler they should not reach; ``lost`` counts inputs whose refusal left
no correct trace (missing or wrong dead letter, metric off, no log line) plus legitimate
requests left unanswered; ``duplicates_processed`` counts messages processed more than once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pamqp import commands as spec
from prometheus_client import REGISTRY

from akma_contract import topology
from akma_contract.identifiers import UA_TLS13_SHARED_KEY, make_af_id
from akma_contract.messages import (
    AkmaAfKeyData,
    AkmaAfKeyRequest,
    AkmaMessage,
    AnchorKeyRegistered,
    Rejected,
    decode_body,
)
from broker_adapter.clock import system_clock_ms
from broker_adapter.envelope import OpenedMessage
from broker_adapter.identity import LocalIdentity, kid_of, load_local_identity
from broker_adapter.runtime import SecureParty, SecuritySettings, open_secure_party
from broker_adapter.secure import Reply, SecureRequester
from broker_adapter.transport import BrokerSettings, OutgoingMessage
from infra.endpoint import BrokerEndpoint
from infra.local_broker import LocalBroker, client_ssl_context
from infra.management import Management
from infra.pki import (
    PkiLayout,
    create_ca,
    ensure_dev_pki,
    issue_cert,
    load_ca_key,
    load_certificate,
    revoke,
)
from network_side.aanf import Aanf
from network_side.af_registry import AfEntry, AfRegistry
from network_side.audit import AuditLog
from network_side.context_store import SqliteContextStore
from network_side.nef import HandlerResult, Nef
from network_side.node import start_network_node
from network_side.service import NetworkService
from network_side.ue_sim import UeSimulator
from reliability import fuzz
from reliability.attacker import Attacker, AttackKit, Captured, Hostile, VerdictKind
from reliability.result import Scale, Scenario, ScenarioResult

log = logging.getLogger("reliability.hostile")

AFS = ("af1.example.com", "af2.example.com", "af3.example.com")
AUSF = "ausf"
VHOST = "akma"
REQUEST_EXCHANGE = topology.REQUEST_EXCHANGE
REQUEST_QUEUE = topology.NETWORK_REQUEST_QUEUE
DEAD_LETTER_QUEUE = topology.DEAD_LETTER_QUEUE
NETWORK = topology.NETWORK_IDENTITY
ROUTING_KEY = topology.NETWORK_ROUTING_KEY
REALM = "5gc.mnc001.mcc001.3gppnetwork.org"
EXAMPLE_REGISTRY = Path(__file__).resolve().parents[1] / "infra" / "af-registry.example.toml"

# Hostile messages are published in rounds; each round first captures fresh envelopes, so that
# replays are always of messages still inside the replay window.
_ROUND = 1000
_PUBLISH_CONCURRENCY = 48
_LEGIT_CONCURRENCY = 4


class ScenarioError(Exception):
    """The scenario could not run as designed (setup failed); not a verdict on the system."""

    code = "scenario_error"


# ---- environment: broker + PKI ------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """A running TLS broker and the PKI it trusts; ``broker_log`` when it is a local node."""

    broker: BrokerEndpoint
    pki: PkiLayout
    workdir: Path
    broker_log: Path | None = None

    def management(self) -> Management:
        if self.broker.management_url is None:
            raise ScenarioError("the attack scenarios need the broker's management API")
        return Management(
            self.broker.management_url, self.pki.admin_password(), str(self.pki.ca_cert)
        )


@contextlib.asynccontextmanager
async def local_environment() -> AsyncIterator[Environment]:
    """A fresh dev PKI and an isolated local broker node, both removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="akma-attack-"))
    try:
        pki = ensure_dev_pki(root / "pki", afs=(*AFS, AUSF))
        node = LocalBroker(root / "broker", pki)
        await asyncio.to_thread(node.start)
        try:
            workdir = root / "work"
            workdir.mkdir()
            yield Environment(node.endpoint(), pki, workdir, node.log_file)
        finally:
            await asyncio.to_thread(node.stop)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- observing the network worker --------------------------------------------------------

_CURRENT_MSG_ID: contextvars.ContextVar[bytes | None] = contextvars.ContextVar(
    "akma_hostile_msg_id", default=None
)


@dataclass
class Observer:
    """Which signed message ids reached the service handler and the NEF, and how often."""

    service: Counter[bytes] = field(default_factory=Counter)
    nef: Counter[bytes] = field(default_factory=Counter)


class ObservedNef(Nef):
    def __init__(self, *args: Any, observer: Observer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observer = observer

    def handle(self, requester: str, message: AkmaMessage) -> HandlerResult:
        msg_id = _CURRENT_MSG_ID.get()
        if msg_id is not None:
            self.observer.nef[msg_id] += 1
        return super().handle(requester, message)


class ObservedNetworkService(NetworkService):
    """The real service; only records the signed id of each message it is handed."""

    def __init__(self, *args: Any, observer: Observer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observer = observer

    async def handle(self, opened: OpenedMessage) -> Reply:
        self.observer.service[opened.msg_id] += 1
        token = _CURRENT_MSG_ID.set(opened.msg_id)
        try:
            return await super().handle(opened)
        finally:
            _CURRENT_MSG_ID.reset(token)


# ---- a deployment: network worker, AUSF, AFs ----------------------------------------------


def generous_registry(afs: Sequence[str] = AFS) -> AfRegistry:
    """The example registry's shape with limits high enough that rate limiting never interferes
    with a hostile-input run (the abuse scenario uses the real example limits)."""
    return AfRegistry.from_mapping(
        {
            "ausf_identities": [AUSF],
            "af": [
                {
                    "identity": af,
                    "kind": "internal" if i == 0 else "external",
                    "rate_per_second": 100_000.0,
                    "burst": 100_000,
                    "af_ids": [{"fqdn": af, "ua_protocol_id": UA_TLS13_SHARED_KEY.hex()}],
                }
                for i, af in enumerate(afs)
            ],
        }
    )


def _broker_settings(env: Environment, name: str) -> BrokerSettings:
    paths = env.pki.party(name)
    return BrokerSettings(
        host=env.broker.host,
        port=env.broker.port,
        vhost=env.broker.vhost,
        identity=name,
        ca_file=env.pki.ca_cert,
        cert_file=paths.tls_cert,
        key_file=paths.tls_key,
        reconnect_interval_s=0.5,
    )


def _security(env: Environment, name: str, trust_dir: Path | None = None) -> SecuritySettings:
    return SecuritySettings(
        key_dir=env.pki.party_dir(name),
        trust_dir=trust_dir or env.pki.root,
        replay_sqlite_path=env.workdir / f"replay-{name}-{os.urandom(4).hex()}.sqlite3",
    )


async def _open_party(env: Environment, name: str, trust_dir: Path | None = None) -> SecureParty:
    return await open_secure_party(_broker_settings(env, name), _security(env, name, trust_dir))


@dataclass
class Client:
    """One party that sends requests to the network and reads its own inbox."""

    name: str
    party: SecureParty
    requester: SecureRequester

    async def request(self, message: AkmaMessage, *, timeout_s: float = 10.0) -> tuple[
        AkmaMessage, bytes
    ]:
        """Send ``message``; return the decoded answer and the request's signed id."""
        answer = await self.requester.request(
            NETWORK, ROUTING_KEY, message.MSG_TYPE, message.to_body(), timeout_s=timeout_s
        )
        if answer.correlation_id is None:
            raise ScenarioError(f"the answer to {message.MSG_TYPE} has no correlation id")
        return decode_body(answer.msg_type, answer.body), answer.correlation_id

    async def capture(self, message: AkmaMessage) -> Captured:
        """Seal and publish a valid request as the AF would, keeping the exact bytes."""
        sealed = self.party.endpoint.codec.encode(
            recipient=NETWORK, msg_type=message.MSG_TYPE, body=message.to_body()
        )
        await self.party.endpoint.publish_sealed(
            REQUEST_EXCHANGE, ROUTING_KEY, sealed.data, sealed.msg_id, msg_type=message.MSG_TYPE
        )
        return Captured(self.name, sealed.data, sealed.msg_id, sealed.timestamp_ms)


@dataclass
class Deployment:
    env: Environment
    network: SecureParty
    service: NetworkService
    contexts: SqliteContextStore
    observer: Observer
    clients: dict[str, Client]
    ues: list[UeSimulator]
    registration_ids: set[bytes]

    def key_request(self, af: str, ue: UeSimulator) -> AkmaAfKeyRequest:
        return AkmaAfKeyRequest(af_id=make_af_id(af, UA_TLS13_SHARED_KEY), a_kid=ue.a_kid)

    async def legit(self, af: str, rng: random.Random) -> tuple[bool, bytes | None]:
        """One legitimate key request; True when answered with the UE's correct K_AF."""
        ue = rng.choice(self.ues)
        try:
            answer, msg_id = await self.clients[af].request(self.key_request(af, ue))
        except Exception:  # an unanswered request is counted, not raised
            log.warning("legitimate request from %s failed", af, exc_info=True)
            return False, None
        ok = isinstance(answer, AkmaAfKeyData) and answer.k_af == ue.k_af(af, UA_TLS13_SHARED_KEY)
        return ok, msg_id


@contextlib.asynccontextmanager
async def deploy(
    env: Environment,
    registry: AfRegistry,
    *,
    afs: Sequence[str] = AFS,
    trust_dir: Path | None = None,
    ue_count: int = 8,
) -> AsyncIterator[Deployment]:
    """Start the network worker and the parties, register ``ue_count`` UEs, tear all down."""
    observer = Observer()

    def observed_nef(
        reg: AfRegistry, aanf: Aanf, clock: Callable[[], int], audit: AuditLog
    ) -> Nef:
        return ObservedNef(reg, aanf, clock, audit=audit, observer=observer)

    def observed_service(party: SecureParty, nef: Nef, prefetch: int) -> NetworkService:
        return ObservedNetworkService(party, nef, prefetch=prefetch, observer=observer)

    # The network worker as ``python -m network_side`` assembles it, observed.
    node = await start_network_node(
        _broker_settings(env, env.pki.network),
        _security(env, env.pki.network, trust_dir),
        store=SqliteContextStore(
            env.workdir / f"contexts-{os.urandom(4).hex()}.sqlite3", master_key=os.urandom(32)
        ),
        registry=registry,
        nef_factory=observed_nef,
        service_factory=observed_service,
    )
    clients: dict[str, Client] = {}
    started: list[SecureRequester] = []
    try:
        for name in (*afs, AUSF):
            party = await _open_party(env, name)
            requester = SecureRequester(
                party.endpoint, party.connection, topology.inbox_queue(name),
                request_exchange=topology.REQUEST_EXCHANGE,
                dead_letter_exchange=topology.DEAD_LETTER_EXCHANGE)
            clients[name] = Client(name, party, requester)
            await requester.start()
            started.append(requester)
        ues = [
            UeSimulator(
                supi=f"imsi-00101{random.randrange(10**10):010d}",
                k_ausf=os.urandom(32),
                realm=REALM,
                gpsi=f"msisdn-1555{i:07d}",
            )
            for i in range(ue_count)
        ]
        registration_ids: set[bytes] = set()
        for ue in ues:
            answer, msg_id = await clients[AUSF].request(ue.anchor_key_info())
            if not isinstance(answer, AnchorKeyRegistered):
                raise ScenarioError(f"UE registration refused: {answer!r}")
            registration_ids.add(msg_id)
        yield Deployment(
            env, node.party, node.service, node.store, observer, clients, ues, registration_ids
        )
    finally:
        await node.close(drain_timeout_s=5)
        for requester in started:
            await requester.stop()
        for client in clients.values():
            await client.party.close()


# ---- metrics -------------------------------------------------------------------------------


def counter_values(name: str, by: str, **fixed: str) -> Counter[str]:
    """Current values of counter ``name`` (its ``_total`` samples) whose labels match
    ``fixed``, summed per value of label ``by``."""
    out: Counter[str] = Counter()
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name != name or any(sample.labels.get(k) != v for k, v in fixed.items()):
                continue
            out[sample.labels.get(by, "")] += int(sample.value)
    return out


def _delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    for key in set(after) | set(before):
        value = after[key] - before[key]
        if value:
            out[key] = value
    return out


@dataclass
class Snapshot:
    rejected: Counter[str]
    duplicates: Counter[str]
    accepted: Counter[str]
    invalid: int

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            rejected=counter_values("akma_broker_rejected_total", "reason", queue=REQUEST_QUEUE),
            duplicates=counter_values("akma_secure_duplicates_total", "kind", queue=REQUEST_QUEUE),
            accepted=counter_values("akma_secure_accepted_total", "msg_type", queue=REQUEST_QUEUE),
            invalid=sum(
                counter_values(
                    "akma_network_requests_total", "answer", request="invalid"
                ).values()
            ),
        )

    def since(self, before: Snapshot) -> Snapshot:
        return Snapshot(
            _delta(self.rejected, before.rejected),
            _delta(self.duplicates, before.duplicates),
            _delta(self.accepted, before.accepted),
            self.invalid - before.invalid,
        )


# ---- the attacker's material ---------------------------------------------------------------


def _write_cert(path: Path, cert: Any) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def prepare_trust_copy(pki: PkiLayout, dest: Path, victim: str) -> tuple[LocalIdentity, ...]:
    """Copy the trust directory the network will use and add two signing certificates for
    ``victim`` from the real CA: one revoked in the copy's CRL, one expired. Returns the
    identities (revoked, expired) that sign with them. The original PKI is left untouched."""
    shutil.copytree(pki.root, dest)
    now = datetime.now(UTC)
    ca_cert = load_certificate(pki.ca_cert)
    ca_key = load_ca_key(pki.ca_key)
    out = []
    windows: tuple[tuple[str, datetime | None, datetime | None], ...] = (
        ("revoked", None, None),
        ("expired", now - timedelta(days=30), now - timedelta(days=1)),
    )
    for tag, not_before, not_after in windows:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_cert(
            ca_cert, ca_key, identity=victim, purpose="sign", public_key=key.public_key(),
            now=now, not_before=not_before, not_after=not_after,
        )
        _write_cert(dest / "parties" / victim / f"sign-{tag}.crt", cert)
        if tag == "revoked":
            revoke(dest, cert, now=now)
        out.append(LocalIdentity(victim, key, kid_of(cert)))
    return tuple(out)


def foreign_identity(victim: str) -> LocalIdentity:
    """A signing key certified under ``victim``'s name by a CA nobody trusts."""
    now = datetime.now(UTC)
    ca_cert, ca_key = create_ca("Foreign CA", now=now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_cert(
        ca_cert, ca_key, identity=victim, purpose="sign", public_key=key.public_key(), now=now
    )
    return LocalIdentity(victim, key, kid_of(cert))


def attack_kit(env: Environment, deployment: Deployment, revoked: LocalIdentity,
               expired: LocalIdentity) -> AttackKit:
    af = deployment.clients[AFS[0]].party
    codec = af.endpoint.codec
    now = system_clock_ms()
    return AttackKit(
        parties={name: load_local_identity(env.pki.party_dir(name), name) for name in AFS},
        network=af.trust.encryption_key_for(env.pki.network, codec.suite, now),
        bystander=af.trust.encryption_key_for(AFS[1], codec.suite, now),
        foreign=foreign_identity(AFS[0]),
        revoked=revoked,
        expired=expired,
        suite=codec.suite,
        policy=deployment.network.endpoint.codec.policy,
    )


# ---- publishing ------------------------------------------------------------------------------


class HostilePublisher:
    """Publishes hostile messages through each AF's own broker connection.

    With a ``user_id`` it uses the party's normal publisher (the broker validates the id); the
    ``missing_user_id`` category goes out on a separate confirmed channel without one.
    """

    def __init__(self, parties: Mapping[str, SecureParty]) -> None:
        self._parties = parties
        self._raw: dict[str, aio_pika.abc.AbstractExchange] = {}
        self._channels: list[aio_pika.abc.AbstractChannel] = []

    async def publish(self, hostile: Hostile, message_id: str) -> None:
        if hostile.with_user_id:
            await self._parties[hostile.publisher].publisher.publish(
                REQUEST_EXCHANGE,
                ROUTING_KEY,
                OutgoingMessage(body=hostile.data, message_id=message_id),
            )
            return
        exchange = self._raw.get(hostile.publisher)
        if exchange is None:
            channel = await self._parties[hostile.publisher].connection.channel(
                publisher_confirms=True
            )
            self._channels.append(channel)
            exchange = await channel.get_exchange(REQUEST_EXCHANGE, ensure=False)
            self._raw[hostile.publisher] = exchange
        await exchange.publish(
            aio_pika.Message(body=hostile.data, message_id=message_id), routing_key=ROUTING_KEY,
            mandatory=True,
        )

    async def close(self) -> None:
        for channel in self._channels:
            with contextlib.suppress(Exception):
                await channel.close()


# ---- dead letters --------------------------------------------------------------------------


async def drain_dead_letters(
    mgmt: Management, wanted: set[str], *, timeout_s: float, batch: int = 500
) -> tuple[dict[str, dict[str, Any]], int]:
    """Take messages off ``akma.dead-letters`` until every id in ``wanted`` was seen (or the
    time is up). Returns {message_id: {"headers", "sha256"}} for the wanted ones and the number
    of other dead letters."""
    found: dict[str, dict[str, Any]] = {}
    others = 0
    deadline = time.monotonic() + timeout_s
    while len(found) < len(wanted) and time.monotonic() < deadline:
        items = await asyncio.to_thread(mgmt.get_messages, VHOST, DEAD_LETTER_QUEUE, batch)
        if not items:
            await asyncio.sleep(0.3)
            continue
        for item in items:
            props = item.get("properties") or {}
            message_id = props.get("message_id")
            if message_id in wanted:
                payload = base64.b64decode(item.get("payload", ""))
                found[message_id] = {
                    "headers": props.get("headers") or {},
                    "sha256": hashlib.sha256(payload).hexdigest(),
                }
            else:
                others += 1
    return found, others


def purge(mgmt: Management, *queues: str) -> None:
    for queue in queues:
        mgmt.purge(VHOST, queue)


async def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval_s)
    return True


# ---- scenario 1: hostile input -------------------------------------------------------------


@dataclass
class _Ledger:
    """What was sent, so that every outcome can be checked against its expectation."""

    hostile: dict[str, Hostile] = field(default_factory=dict)  # AMQP message id -> message
    captured: list[Captured] = field(default_factory=list)
    legit_ids: set[bytes] = field(default_factory=set)
    legit_sent: int = 0
    legit_ok: int = 0

    def expected(self) -> tuple[Counter[str], int, int]:
        reasons: Counter[str] = Counter()
        duplicates = invalid = 0
        for h in self.hostile.values():
            if h.verdict.kind is VerdictKind.DEAD_LETTER:
                reasons[h.verdict.reason] += 1
            elif h.verdict.kind is VerdictKind.DUPLICATE:
                duplicates += 1
            else:
                invalid += 1
        return reasons, duplicates, invalid


async def _legit_traffic(d: Deployment, ledger: _Ledger, total: int, seed: int) -> None:
    rng = random.Random(seed)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(AFS[i % len(AFS)])

    async def worker() -> None:
        while True:
            try:
                af = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            ledger.legit_sent += 1
            ok, msg_id = await d.legit(af, rng)
            ledger.legit_ok += ok
            if msg_id is not None:
                ledger.legit_ids.add(msg_id)

    await asyncio.gather(*(worker() for _ in range(_LEGIT_CONCURRENCY * len(AFS))))


async def _capture_round(d: Deployment, ledger: _Ledger, per_af: int) -> list[Captured]:
    """Valid requests the attacker records on the way; wait until the network finished them."""
    fresh: list[Captured] = []
    for af in AFS:
        for _ in range(per_af):
            fresh.append(await d.clients[af].capture(d.key_request(af, random.choice(d.ues))))
    if not await wait_for(lambda: all(d.observer.nef[c.msg_id] for c in fresh), 30):
        raise ScenarioError("captured requests were not processed within 30 s")
    # The handler has run; give the replay guard a moment to record the answer (DONE), so that
    # a replay finds a finished entry rather than one still in progress.
    await asyncio.sleep(0.5)
    ledger.captured.extend(fresh)
    return fresh


async def run_hostile_input(env: Environment, scale: Scale, *, seed: int = 5) -> ScenarioResult:
    started = time.monotonic()
    result = ScenarioResult("hostile_input")
    mgmt = env.management()
    await asyncio.to_thread(purge, mgmt, REQUEST_QUEUE, DEAD_LETTER_QUEUE)
    trust_copy = env.workdir / f"trust-copy-{os.urandom(4).hex()}"
    revoked, expired = prepare_trust_copy(env.pki, trust_copy, AFS[0])
    ledger = _Ledger()
    failures: list[str] = []
    async with deploy(env, generous_registry(), trust_dir=trust_copy) as d:
        attacker = Attacker(
            attack_kit(env, d, revoked, expired), clock=system_clock_ms, rng=os.urandom, seed=seed
        )
        publisher = HostilePublisher({name: d.clients[name].party for name in AFS})
        before = Snapshot.take()
        legit_total = max(scale.requests, 30)
        legit = asyncio.create_task(_legit_traffic(d, ledger, legit_total, seed))
        await _send_hostile(d, attacker, publisher, ledger, scale.hostile)
        await legit
        # Proof that the worker is still up and serving after the flood.
        for af in AFS:
            ledger.legit_sent += 1
            ok, msg_id = await d.legit(af, random.Random(seed))
            ledger.legit_ok += ok
            if msg_id is not None:
                ledger.legit_ids.add(msg_id)
        await publisher.close()

        expected = ledger.expected()
        want_reasons, want_duplicates, want_invalid = expected
        n_events = sum(want_reasons.values()) + want_duplicates + want_invalid

        def settled() -> bool:
            delta = Snapshot.take().since(before)
            return (
                sum(delta.rejected.values()) + delta.duplicates["done"] + delta.invalid >= n_events
            )

        if not await wait_for(settled, timeout_s=120, interval_s=0.2):
            failures.append("the network did not settle every hostile message within 120 s")
        delta = Snapshot.take().since(before)
        observer = d.observer

    found, dead, not_matched = await _check_dead_letters(mgmt, ledger, failures)
    counters_off = _check_counters(delta, expected, failures)
    forgeries, twice = _processed_wrongly(ledger, observer, d.registration_ids)
    accepted_total = sum(delta.accepted.values())

    categories = Counter(h.category for h in ledger.hostile.values())
    result.load = ledger.legit_sent
    result.answered = ledger.legit_ok
    result.hostile_tried = len(ledger.hostile)
    result.forgeries_accepted = forgeries
    result.duplicates_processed = twice
    result.lost = (ledger.legit_sent - ledger.legit_ok) + not_matched + counters_off
    result.seconds = time.monotonic() - started
    result.extra = {
        "categories": dict(sorted(categories.items())),
        "dead_lettered_by_reason": dict(sorted(delta.rejected.items())),
        "duplicates_acked": dict(delta.duplicates),
        "invalid_bodies_answered": delta.invalid,
        "captured_replayed_from": len(ledger.captured),
        "accepted_by_secure_layer": accepted_total,
        "dead_letters_read": len(found),
        "failures": failures,
    }
    result.notes = (
        f"{len(ledger.hostile)} hostile in {len(categories)} categories; "
        f"{len(found)}/{dead} dead letters matched by id, reason and bytes; "
        f"{delta.duplicates['done']} replays acked as duplicates; "
        f"{delta.invalid} authentic invalid bodies answered invalid_request"
        + ("; FAILURES: " + " | ".join(failures) if failures else "")
    )
    return result


async def _send_hostile(d: Deployment, attacker: Attacker, publisher: HostilePublisher,
                        ledger: _Ledger, total: int) -> None:
    """``total`` hostile messages in rounds, each round replaying freshly captured ones."""
    semaphore = asyncio.Semaphore(_PUBLISH_CONCURRENCY)

    async def send(message_id: str, hostile: Hostile) -> None:
        async with semaphore:
            await publisher.publish(hostile, message_id)

    rounds = math.ceil(total / _ROUND)
    made = 0
    for r in range(rounds):
        fresh = await _capture_round(d, ledger, per_af=3)
        count = min(_ROUND, total - made)
        batch = attacker.batch(count, fresh)
        made += count
        named = {f"hostile-{r}-{i}-{h.category}": h for i, h in enumerate(batch)}
        ledger.hostile.update(named)
        await asyncio.gather(*(send(mid, h) for mid, h in named.items()))


async def _check_dead_letters(
    mgmt: Management, ledger: _Ledger, failures: list[str]
) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Every refused message dead-lettered with its reason and its original bytes.

    Returns the dead letters found by id, how many were expected, and how many of those are
    missing or carry a wrong reason or body."""
    dead = {
        mid: h for mid, h in ledger.hostile.items() if h.verdict.kind is VerdictKind.DEAD_LETTER
    }
    found, other_dead = await drain_dead_letters(
        mgmt, set(dead), timeout_s=max(60.0, len(dead) / 50)
    )
    missing = [mid for mid in dead if mid not in found]
    wrong = [
        mid for mid, item in found.items()
        if item["headers"].get("x-akma-reason") != dead[mid].verdict.reason
        or item["headers"].get("x-akma-queue") != REQUEST_QUEUE
        or item["sha256"] != hashlib.sha256(dead[mid].data).hexdigest()
    ]
    if missing:
        failures.append(f"{len(missing)} dead letters missing, e.g. {missing[:3]}")
    if wrong:
        failures.append(f"{len(wrong)} dead letters with a wrong reason or body, e.g. {wrong[:3]}")
    if other_dead:
        failures.append(f"{other_dead} unexpected dead letters (legitimate traffic refused?)")
    return found, len(dead), len(missing) + len(wrong)


def _check_counters(
    delta: Snapshot, expected: tuple[Counter[str], int, int], failures: list[str]
) -> int:
    """Each refusal reason, duplicate and invalid body counted exactly; the total miscount."""
    want_reasons, want_duplicates, want_invalid = expected
    metric_off = sum(
        abs(delta.rejected[r] - want_reasons[r]) for r in set(delta.rejected) | set(want_reasons)
    )
    if metric_off:
        failures.append(
            f"akma_broker_rejected_total off by {metric_off}: "
            f"want {dict(want_reasons)}, got {dict(delta.rejected)}"
        )
    duplicate_off = abs(delta.duplicates["done"] - want_duplicates)
    invalid_off = abs(delta.invalid - want_invalid)
    if duplicate_off:
        failures.append(f"duplicates: want {want_duplicates}, got {dict(delta.duplicates)}")
    if invalid_off:
        failures.append(f"invalid bodies answered: want {want_invalid}, got {delta.invalid}")
    return metric_off + duplicate_off + invalid_off


def _processed_wrongly(
    ledger: _Ledger, observer: Observer, registration_ids: set[bytes]
) -> tuple[int, int]:
    """Hostile messages that reached the service or the NEF, and messages processed twice."""
    invalid_ids = {
        h.msg_id for h in ledger.hostile.values()
        if h.verdict.kind is VerdictKind.INVALID_BODY and h.msg_id is not None
    }
    allowed = ledger.legit_ids | {c.msg_id for c in ledger.captured} | registration_ids
    reached_service = [m for m in observer.service if m not in allowed | invalid_ids]
    reached_nef = [m for m in observer.nef if m not in allowed]
    forgeries = len(set(reached_service) | set(reached_nef))
    twice = sum(c - 1 for c in observer.service.values() if c > 1)
    twice += sum(c - 1 for c in observer.nef.values() if c > 1)
    return forgeries, twice


# ---- scenario 2: abuse by a legitimate AF --------------------------------------------------


class LogCapture(logging.Handler):
    """Collects log records of the named loggers at INFO and above while active."""

    def __init__(self, *names: str) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self._names = names
        self._levels: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @contextlib.contextmanager
    def active(self) -> Iterator[LogCapture]:
        for name in self._names:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            # The audit log writes nothing unless INFO is enabled for it.
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
            logger.addHandler(self)
        try:
            yield self
        finally:
            for name in self._names:
                logger = logging.getLogger(name)
                logger.removeHandler(self)
                logger.setLevel(self._levels[name])

    def audit(self, event: str, outcome: str, requester: str) -> list[dict[str, Any]]:
        out = []
        for record in self.records:
            if record.name != "akma.audit":
                continue
            line = json.loads(record.getMessage())
            if (line.get("event"), line.get("outcome"), line.get("requester")) == (
                event, outcome, requester,
            ):
                out.append(line)
        return out

    def with_fields(self, message: str, **fields: Any) -> list[logging.LogRecord]:
        return [
            r for r in self.records
            if r.getMessage() == message
            and all(getattr(r, k, None) == v for k, v in fields.items())
        ]


def _broker_log_mentions(env: Environment, offset: int, *needles: str) -> bool | None:
    """True if the local broker's log (after ``offset`` bytes) contains every needle; None when
    the broker's log is not reachable from here (an external or containerised broker)."""
    if env.broker_log is None or not env.broker_log.exists():
        return None
    with env.broker_log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    return all(n in text for n in needles)


def _log_size(env: Environment) -> int:
    if env.broker_log is None or not env.broker_log.exists():
        return 0
    return env.broker_log.stat().st_size


async def _raw_connection(env: Environment, party: str) -> aiormq.abc.AbstractConnection:
    return await aiormq.connect(env.broker.amqp_url, context=client_ssl_context(env.pki, party))


@dataclass
class _Attempt:
    name: str
    refused: bool
    logged: bool | None  # None: the log that would show it is not reachable from here


async def _read_other_queues(env: Environment, attacker: str, victim: str) -> list[_Attempt]:
    attempts = []
    conn = await _raw_connection(env, attacker)
    try:
        for queue, how in (
            (REQUEST_QUEUE, "consume"),
            (REQUEST_QUEUE, "get"),
            (topology.inbox_queue(victim), "consume"),
            (DEAD_LETTER_QUEUE, "consume"),
        ):
            offset = _log_size(env)
            channel = await conn.channel()
            refused = False
            try:
                if how == "consume":
                    await channel.basic_consume(queue, lambda _m: None)  # type: ignore[arg-type, return-value]
                else:
                    await channel.basic_get(queue, no_ack=False)
            except aiormq.exceptions.ChannelAccessRefused:
                refused = True
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
            await asyncio.sleep(0.3)  # the broker writes its log line asynchronously
            logged = _broker_log_mentions(
                env, offset, "access_refused", f"access to queue '{queue}'",
                f"refused for user '{attacker}'",
            )
            attempts.append(_Attempt(f"{how} {queue}", refused, logged))
    finally:
        await conn.close()
    return attempts


async def _forge_user_id(
    env: Environment, attacker: str, claimed: Sequence[str], mgmt: Management
) -> list[_Attempt]:
    attempts = []
    conn = await _raw_connection(env, attacker)
    try:
        for name in claimed:
            offset = _log_size(env)
            channel = await conn.channel(publisher_confirms=True)
            refused = False
            try:
                await channel.basic_publish(
                    b"forged",
                    exchange=REQUEST_EXCHANGE,
                    routing_key=ROUTING_KEY,
                    mandatory=True,
                    properties=spec.Basic.Properties(
                        user_id=name, message_id=f"forged-user-id-{name}"
                    ),
                )
            except aiormq.exceptions.ChannelPreconditionFailed:
                refused = True
            await asyncio.sleep(0.3)
            logged = _broker_log_mentions(
                env, offset, "precondition_failed", f"user_id property set to '{name}'",
                f"authenticated user was '{attacker}'",
            )
            attempts.append(_Attempt(f"publish as {name}", refused, logged))
    finally:
        await conn.close()
    return attempts


async def run_legit_af_abuse(env: Environment, scale: Scale) -> ScenarioResult:
    started = time.monotonic()
    result = ScenarioResult("legit_af_abuse")
    mgmt = env.management()
    await asyncio.to_thread(purge, mgmt, REQUEST_QUEUE, DEAD_LETTER_QUEUE)
    rogue, victim = AFS[1], AFS[0]  # af2 is the abuser: external, 10/s with a burst of 20
    registry = AfRegistry.load(EXAMPLE_REGISTRY)
    entry = registry.get(rogue)
    if entry is None:
        raise ScenarioError(f"{rogue} is not in {EXAMPLE_REGISTRY}")
    capture = LogCapture("akma.audit", "broker_adapter")
    attempts: list[_Attempt] = []
    failures: list[str] = []
    flood_n = max(60, scale.requests // 25)
    with capture.active():
        async with deploy(env, registry, afs=(victim, rogue)) as d:
            before = Snapshot.take()
            # 1. Reading other parties' queues.
            attempts += await _read_other_queues(env, rogue, victim)
            # 2. Publishing under another party's user id.
            attempts += await _forge_user_id(env, rogue, (victim, env.pki.network), mgmt)

            # 3. Flooding past the rate limit: every request is answered, the excess refused.
            rng = random.Random(7)
            flood = await _flood(d, rogue, entry, flood_n, rng)
            flood.audited = len(capture.audit("af_key.authorise", "rate_limited", rogue))
            failures += flood.failures()
            attempts += [_Attempt("flood", True, flood.audited == flood.limited)] * flood.limited
            # The victim's own bucket is untouched by the rogue's flood.
            control_ok = 0
            for _ in range(5):
                ok, _mid = await d.legit(victim, rng)
                control_ok += ok

            # 4. Replaying captured requests.
            replayed, twice = await _replay_captured(env, d, capture, before, (rogue, victim))
            attempts += replayed

    found, _others = await drain_dead_letters(
        mgmt, {"replay-other", "replay-conflict", "forged-user-id-" + victim}, timeout_s=5
    )
    if "forged-user-id-" + victim in found:
        failures.append("a publish with a forged user_id reached the network's queue")
    for mid, reason in (
        ("replay-other", "identity_mismatch"),
        ("replay-conflict", "replay_conflict"),
    ):
        if found.get(mid, {}).get("headers", {}).get("x-akma-reason") != reason:
            failures.append(f"{mid} not dead-lettered with reason {reason}")
    not_refused = [a.name for a in attempts if not a.refused]
    not_logged = [a.name for a in attempts if a.logged is False]
    unverified = sorted({a.name for a in attempts if a.logged is None})
    forged_through = "forged-user-id-" + victim in found
    result.load = flood_n + 5
    result.answered = flood.served + flood.limited + control_ok
    result.hostile_tried = len(attempts)
    # Requests served beyond the bucket's ceiling were accepted although they should not be.
    result.forgeries_accepted = (
        len(not_refused) + int(forged_through) + max(0, flood.served - math.floor(flood.ceiling))
    )
    result.duplicates_processed = twice
    result.lost = len(not_logged) + sum(
        1 for mid, reason in (("replay-other", "identity_mismatch"),
                              ("replay-conflict", "replay_conflict"))
        if found.get(mid, {}).get("headers", {}).get("x-akma-reason") != reason
    )
    result.seconds = time.monotonic() - started
    result.extra = {
        "attempts": [a.__dict__ for a in attempts if a.name != "flood"],
        "flood": {"sent": flood_n, "served": flood.served, "rate_limited": flood.limited,
                  "unanswered": flood.sent - flood.served - flood.limited,
                  "seconds": round(flood.elapsed, 3), "ceiling": round(flood.ceiling, 1)},
        "control_requests_ok": control_ok,
        "failures": failures,
        "log_unverified": unverified,
    }
    result.notes = (
        f"{len(attempts)} abuse attempts refused: queue reads ACCESS_REFUSED, forged user_id "
        f"PRECONDITION_FAILED, flood {flood.limited}/{flood_n} rate_limited (audited), replay "
        f"processed "
        f"once + duplicate logged, other-sender and conflicting replays dead-lettered"
        + (f"; broker log not reachable for {unverified}" if unverified else "")
        + ("; FAILURES: " + " | ".join(failures + not_refused + not_logged)
           if failures or not_refused or not_logged else "")
    )
    return result


@dataclass
class _FloodOutcome:
    sent: int
    served: int
    limited: int
    elapsed: float
    # The most a token bucket can serve in ``elapsed``: its burst plus the refill, plus one.
    ceiling: float
    audited: int = 0

    def failures(self) -> list[str]:
        out = []
        if self.served > self.ceiling:
            out.append(f"served {self.served} > bucket ceiling {self.ceiling:.0f}")
        if self.limited == 0:
            out.append("the flood was never rate limited")
        if self.audited != self.limited:
            out.append(f"{self.limited} rate-limited answers but {self.audited} audit lines")
        return out


async def _flood(
    d: Deployment, rogue: str, entry: AfEntry, sent: int, rng: random.Random
) -> _FloodOutcome:
    """``sent`` key requests by ``rogue`` at once: every one answered, the excess refused."""
    flood_started = time.monotonic()
    answers = await asyncio.gather(
        *(d.clients[rogue].request(d.key_request(rogue, rng.choice(d.ues)))
          for _ in range(sent)),
        return_exceptions=True,
    )
    elapsed = time.monotonic() - flood_started
    served = sum(isinstance(a, tuple) and isinstance(a[0], AkmaAfKeyData) for a in answers)
    limited = sum(
        isinstance(a, tuple)
        and isinstance(a[0], Rejected)
        and a[0].reason == "rate_limited"
        for a in answers
    )
    ceiling = entry.burst + entry.rate_per_second * elapsed + 1
    return _FloodOutcome(sent, served, limited, elapsed, ceiling)


async def _replay_captured(
    env: Environment, d: Deployment, capture: LogCapture, before: Snapshot,
    parties: tuple[str, str],
) -> tuple[list[_Attempt], int]:
    """The rogue replays its own request (a duplicate: acked, processed once), replays the
    victim's bytes (the broker's user_id betrays it) and re-seals its own id with other bytes
    (a replay conflict). Returns the attempts and how many requests the NEF processed twice."""
    rogue, victim = parties
    own = await d.clients[rogue].capture(d.key_request(rogue, d.ues[0]))
    theirs = await d.clients[victim].capture(d.key_request(victim, d.ues[0]))
    await wait_for(lambda: d.observer.nef[own.msg_id] and d.observer.nef[theirs.msg_id], 10)
    await asyncio.sleep(0.5)  # let the replay guard record both as DONE
    attacker = Attacker(attack_kit_for_abuse(env, d), clock=system_clock_ms,
                        rng=os.urandom, seed=11)
    publisher = HostilePublisher({n: d.clients[n].party for n in (victim, rogue)})
    replays = {
        "replay-same": attacker.replay(own),
        "replay-other": attacker.replay_other_sender(theirs),
        "replay-conflict": attacker.same_id_other_bytes(own),
    }
    for mid, hostile in replays.items():
        if hostile.publisher != rogue:
            raise ScenarioError(f"{mid} would be published by {hostile.publisher}, not {rogue}")
        await publisher.publish(hostile, mid)
    await publisher.close()

    def replays_settled() -> bool:
        delta = Snapshot.take().since(before)
        return delta.duplicates["done"] >= 1 and (
            delta.rejected["identity_mismatch"] >= 1
            and delta.rejected["replay_conflict"] >= 1
        )

    await wait_for(replays_settled, 15)
    delta = Snapshot.take().since(before)
    dup_logged = bool(
        capture.with_fields("duplicate delivery acked", msg_id=own.msg_id.hex())
    )
    attempts = [_Attempt(
        "replay by its sender",
        delta.duplicates["done"] >= 1 and d.observer.nef[own.msg_id] == 1,
        dup_logged,
    )]
    for mid, reason in (
        ("replay-other", "identity_mismatch"),
        ("replay-conflict", "replay_conflict"),
    ):
        logged = bool(capture.with_fields("dead-lettered", message_id=mid, reason=reason))
        attempts.append(_Attempt(mid, delta.rejected[reason] >= 1, logged))
    twice = sum(c - 1 for c in d.observer.nef.values() if c > 1)
    return attempts, twice


def attack_kit_for_abuse(env: Environment, d: Deployment) -> AttackKit:
    """The rogue only needs its own keys and the captured bytes; no special signers."""
    unused = foreign_identity(AFS[0])
    af = d.clients[AFS[0]].party
    now = system_clock_ms()
    return AttackKit(
        parties={name: load_local_identity(env.pki.party_dir(name), name) for name in AFS[:2]},
        network=af.trust.encryption_key_for(env.pki.network, af.endpoint.codec.suite, now),
        bystander=af.trust.encryption_key_for(AFS[1], af.endpoint.codec.suite, now),
        foreign=unused,
        revoked=unused,
        expired=unused,
        suite=af.endpoint.codec.suite,
        policy=d.network.endpoint.codec.policy,
    )


# ---- scenario 3: fuzzing -------------------------------------------------------------------


def run_fuzzing(scale: Scale, *, seed: int = 1) -> ScenarioResult:
    started = time.monotonic()
    world = fuzz.FuzzWorld.create()
    envelopes = fuzz.fuzz_envelopes(world, scale.fuzz_inputs, seed=seed)
    models = fuzz.fuzz_models(scale.fuzz_inputs, seed=seed)
    result = ScenarioResult("fuzzing")
    result.hostile_tried = envelopes.inputs + models.inputs
    result.forgeries_accepted = envelopes.forgeries
    result.lost = len(envelopes.escapes) + len(models.escapes)
    result.seconds = time.monotonic() - started
    result.extra = {"envelope": envelopes.summary(), "models": models.summary()}
    result.notes = (
        f"envelope decoder {envelopes.inputs} inputs at {envelopes.rate:,.0f}/s, "
        f"message models {models.inputs} at {models.rate:,.0f}/s; "
        f"escapes {len(envelopes.escapes) + len(models.escapes)}"
    )
    return result


# ---- registry for scripts/soak.py ----------------------------------------------------------


@contextlib.contextmanager
def _expected_warnings_counted_not_printed() -> Iterator[None]:
    """Every hostile message makes the consumer log a "dead-lettered" warning. When the soak
    runner configured no logging, Python would print each of them (10,000) to stderr; a
    handler on our loggers keeps them out of the summary, and the dead-letter queue and the
    metrics hold the same facts."""
    if logging.getLogger().handlers:
        yield
        return
    handler = logging.NullHandler()
    names = ("broker_adapter", "network_side", "reliability")
    for name in names:
        logging.getLogger(name).addHandler(handler)
    try:
        yield
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)


async def hostile_input(scale: Scale) -> ScenarioResult:
    with _expected_warnings_counted_not_printed():
        async with local_environment() as env:
            return await run_hostile_input(env, scale)


async def legit_af_abuse(scale: Scale) -> ScenarioResult:
    with _expected_warnings_counted_not_printed():
        async with local_environment() as env:
            return await run_legit_af_abuse(env, scale)


async def fuzzing(scale: Scale) -> ScenarioResult:
    return await asyncio.to_thread(run_fuzzing, scale)


SCENARIOS: dict[str, Scenario] = {
    "hostile_input": hostile_input,
    "legit_af_abuse": legit_af_abuse,
    "fuzzing": fuzzing,
}
