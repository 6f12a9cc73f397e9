"""``make demo``: the whole AKMA flow over the secure broker, on one machine, in one command.

1. dev PKI (network, two AFs, the AUSF) and an isolated TLS RabbitMQ node with its management UI;
2. the network worker and two AF workers as real background processes;
3. the AUSF registers a subscriber; the UE presents its A-KID to each AF; each AF fetches K_AF
   from the network; the UE's and each AF's K_AF are printed and compared;
4. AF2 asking with AF1's AF_ID is refused; a replayed envelope is processed once; a tampered one
   is dead-lettered with its reason;
5. everything is shut down (or the broker is kept with ``--keep-broker`` for exploring the UI).

Exit status 0 only if every check held.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from akma_contract import topology
from akma_contract.identifiers import UA_TLS13_SHARED_KEY, make_af_id
from akma_contract.messages import AkmaAfKeyRequest, AkmaKeyInfo, decode_body
from akma_contract.topology import (
    DEAD_LETTER_QUEUE,
    NETWORK_IDENTITY,
    NETWORK_REQUEST_QUEUE,
    NETWORK_ROUTING_KEY,
    REQUEST_EXCHANGE,
    inbox_queue,
)
from as_side.errors import KeyRequestRejectedError
from as_side.service import AfService
from as_side.ua_server import key_proof, ua_request
from broker_adapter.runtime import SecuritySettings, open_secure_party
from broker_adapter.secure import SecureRequester
from broker_adapter.transport import BrokerSettings
from infra.endpoint import BrokerEndpoint
from infra.local_broker import LocalBroker
from infra.management import Management
from infra.pki import PkiLayout, ensure_dev_pki
from network_side.ue_sim import UeSimulator

REPO = Path(__file__).resolve().parents[1]
AF1, AF2, AUSF = "af1.example.com", "af2.example.com", "ausf"
NETWORK = NETWORK_IDENTITY
REALM = "5gc.mnc001.mcc001.3gppnetwork.org"
REGISTRY = REPO / "infra" / "af-registry.example.toml"


class Demo:
    def __init__(self, pki_dir: Path, broker_dir: Path, work: Path, keep_broker: bool) -> None:
        self.pki_dir, self.broker_dir, self.work = pki_dir, broker_dir, work
        self.keep_broker = keep_broker
        self.failures: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.broker: LocalBroker | None = None

    # ---- output ---------------------------------------------------------------------------

    @staticmethod
    def step(text: str) -> None:
        print(f"\n== {text}", flush=True)

    def check(self, ok: bool, text: str) -> None:
        print(f"   [{'ok' if ok else 'FAILED'}] {text}", flush=True)
        if not ok:
            self.failures.append(text)

    # ---- set-up ---------------------------------------------------------------------------

    def start_broker(self) -> tuple[PkiLayout, BrokerEndpoint]:
        self.step("Dev PKI and local TLS broker")
        pki = ensure_dev_pki(self.pki_dir, afs=[AF1, AF2, AUSF])
        print(f"   PKI: {pki.root} (CA, broker cert, TLS/signing/encryption keys per party)")
        broker = LocalBroker(self.broker_dir, pki)
        if broker.is_running():
            broker.stop()
        endpoint = broker.start()
        self.broker = broker
        print(f"   broker: {endpoint.amqp_url} (TLS only, certificate login) "
              f"ready in {broker.boot_seconds}s")
        return pki, endpoint

    def worker_env(
        self, pki: PkiLayout, endpoint: BrokerEndpoint, prefix: str, name: str
    ) -> dict[str, str]:
        party = pki.party(name)
        env = dict(os.environ)
        env.update({
            f"{prefix}BROKER__HOST": endpoint.host,
            f"{prefix}BROKER__PORT": str(endpoint.port),
            f"{prefix}BROKER__VHOST": endpoint.vhost,
            f"{prefix}BROKER__IDENTITY": name,
            f"{prefix}BROKER__CA_FILE": str(pki.ca_cert),
            f"{prefix}BROKER__CERT_FILE": str(party.tls_cert),
            f"{prefix}BROKER__KEY_FILE": str(party.tls_key),
            f"{prefix}SECURITY__KEY_DIR": str(pki.party_dir(name)),
            f"{prefix}SECURITY__TRUST_DIR": str(pki.root),
            f"{prefix}SECURITY__REPLAY_SQLITE_PATH": str(self.work / f"replay-{name}.sqlite3"),
        })
        return env

    def spawn(self, label: str, module: str, env: dict[str, str]) -> None:
        log = open(self.work / f"{label}.log", "wb")  # noqa: SIM115 - owned by the child
        self.procs[label] = subprocess.Popen(  # noqa: S603 - this interpreter and our module
            [sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT,
            cwd=REPO, stdin=subprocess.DEVNULL,
        )
        log.close()

    def wait_ready(self, label: str, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        log = self.work / f"{label}.log"
        while time.monotonic() < deadline:
            if b'"msg":"ready"' in log.read_bytes():
                return
            if self.procs[label].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"{label} did not become ready; its log:\n{log.read_text()[-3000:]}")

    def start_workers(self, pki: PkiLayout, endpoint: BrokerEndpoint) -> dict[str, int]:
        self.step("Workers: network (AAnF + NEF) and two AFs, as background processes")
        master = self.work / "master.key"
        if not master.exists():
            master.write_text(os.urandom(32).hex())
        master.chmod(0o600)
        net_env = self.worker_env(pki, endpoint, "AKMA_NET_", NETWORK)
        metrics_port = free_port()
        net_env.update({
            "AKMA_NET_AF_REGISTRY": str(REGISTRY),
            "AKMA_NET_MASTER_KEY_FILE": str(master),
            "AKMA_NET_CONTEXT_DB": str(self.work / "contexts.sqlite3"),
            "AKMA_NET_METRICS_PORT": str(metrics_port),
        })
        self.spawn("network", "network_side", net_env)
        ports: dict[str, int] = {"metrics": metrics_port}
        for af in (AF1, AF2):
            env = self.worker_env(pki, endpoint, "AKMA_AF_", af)
            ports[af] = free_port()
            env.update({
                "AKMA_AF_AF_FQDN": af,
                "AKMA_AF_UA_PORT": str(ports[af]),
                "AKMA_AF_DEMO_REVEAL_KEYS": "true",
            })
            self.spawn(af, "as_side", env)
        for label in ("network", AF1, AF2):
            self.wait_ready(label)
            print(f"   {label}: pid {self.procs[label].pid}, log {self.work / (label + '.log')}")
        print(f"   network metrics: http://127.0.0.1:{metrics_port}/metrics")
        return ports

    def stop_worker(self, label: str) -> None:
        proc = self.procs.pop(label)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
        self.check(code == 0, f"{label} drained and exited cleanly on SIGTERM (exit {code})")

    def shutdown(self) -> None:
        for label in list(self.procs):
            self.stop_worker(label)
        if self.broker is not None and not self.keep_broker:
            self.broker.stop()
            print("   broker stopped")

    # ---- the flow -------------------------------------------------------------------------

    async def run(self) -> None:
        pki, endpoint = self.start_broker()
        ports = self.start_workers(pki, endpoint)
        mgmt = Management(endpoint.management_url or "", pki.admin_password(), str(pki.ca_cert))
        ue = UeSimulator(
            supi="imsi-001010000000001", k_ausf=os.urandom(32), realm=REALM, gpsi="msisdn-15550001"
        )

        self.step(
            "AUSF registers the subscriber's anchor key at the AAnF (Naanf_AKMA_AnchorKey_Register)"
        )
        ausf = await open_secure_party(
            self.broker_settings(pki, endpoint, AUSF), self.security(pki, AUSF)
        )
        requester = SecureRequester(
            ausf.endpoint, ausf.connection, inbox_queue(AUSF),
            request_exchange=topology.REQUEST_EXCHANGE,
            dead_letter_exchange=topology.DEAD_LETTER_EXCHANGE)
        await requester.start()
        try:
            info: AkmaKeyInfo = ue.anchor_key_info()
            answer = await requester.request(
                NETWORK, NETWORK, info.MSG_TYPE, info.to_body(), timeout_s=5
            )
            reply = decode_body(answer.msg_type, answer.body)
            self.check(getattr(reply, "a_kid", None) == ue.a_kid, f"registered A-KID {ue.a_kid}")
        finally:
            await requester.stop()
            await ausf.close()

        self.step("UE presents its A-KID to each AF; each AF fetches K_AF from the network")
        seen: dict[str, dict[str, Any]] = {}
        for af in (AF1, AF2):
            challenge = os.urandom(16)
            result = await ua_request(
                "127.0.0.1", ports[af], {"a_kid": ue.a_kid, "challenge": challenge.hex()}
            )
            ue_key = ue.k_af(af, UA_TLS13_SHARED_KEY)
            print(f"   {af}:")
            print(f"     K_AF derived by the UE : {ue_key.hex()}")
            print(f"     K_AF fetched by the AF : {result.get('k_af')}")
            ok = result.get("ok") is True and result.get("k_af") == ue_key.hex()
            self.check(ok, f"{af}: UE and AF hold the same K_AF")
            proof_ok = result.get("proof") == key_proof(ue_key, challenge).hex()
            self.check(proof_ok, f"{af}: key-confirmation proof verifies with the UE's K_AF")
            print(f"     identity given to the AF: supi={result.get('supi')} "
                  f"gpsi={result.get('gpsi')}")
            seen[af] = result
        self.check(seen[AF1].get("supi") == ue.supi, "AF1 is internal: it was given the SUPI")
        self.check(seen[AF2].get("supi") is None and seen[AF2].get("gpsi") == ue.gpsi,
                   "AF2 is external: it was given the GPSI, never the SUPI")

        self.step(
            "AF2 (worker stopped; its identity used by a misbehaving client) asks with AF1's AF_ID"
        )
        self.stop_worker(AF2)
        await self.misbehave(pki, endpoint, ue, mgmt, ports["metrics"])

        self.step("Where to look")
        print(f"   management UI : {endpoint.management_url}  (user admin, password in "
              f"{pki.admin_password_file})")
        print(f"   queues        : {NETWORK_REQUEST_QUEUE}, {inbox_queue('<fqdn>')}, "
              f"{DEAD_LETTER_QUEUE} "
              "(x-akma-reason header on each dead letter)")
        print(f"   worker logs   : {self.work}/*.log (JSON lines; audit logger 'akma.audit')")

    async def misbehave(
        self, pki: PkiLayout, endpoint: BrokerEndpoint, ue: UeSimulator, mgmt: Management,
        metrics_port: int,
    ) -> None:
        party = await open_secure_party(
            self.broker_settings(pki, endpoint, AF2), self.security(pki, AF2)
        )
        rogue = AfService.build(party, af_id=make_af_id(AF1, UA_TLS13_SHARED_KEY), timeout_s=5)
        await rogue.start()
        try:
            try:
                await rogue.client.get_application_key(ue.a_kid)
                self.check(False, "AF2 was refused K_AF for AF1's AF_ID")
            except KeyRequestRejectedError as exc:
                self.check(exc.reason == "unauthorized", f"AF2 refused: {exc.reason}")

            self.step("Replay and tampering through the broker")
            own = AkmaAfKeyRequest(af_id=make_af_id(AF2, UA_TLS13_SHARED_KEY), a_kid=ue.a_kid)
            data, msg_id = await party.endpoint.seal(NETWORK, own.MSG_TYPE, own.to_body())

            def served() -> float:
                return metric(metrics_port, "akma_network_requests_total",
                              'request="akma.af_key.request",answer="akma.af_key.data"')

            def dups() -> float:
                return metric(metrics_port, "akma_secure_duplicates_total", 'kind="done"')

            before_served, before_dups = served(), dups()
            await party.endpoint.publish_sealed(
                REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, data, msg_id, msg_type=own.MSG_TYPE
            )
            await wait_until(lambda: served() > before_served)
            await party.endpoint.publish_sealed(
                REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, data, msg_id, msg_type=own.MSG_TYPE
            )
            await wait_until(lambda: dups() > before_dups)
            self.check(served() - before_served == 1 and dups() - before_dups == 1,
                       "the same envelope sent twice was processed once (the replay was "
                       "recognised and answered from cache, no second key derivation)")

            tampered = bytearray(data)
            tampered[len(tampered) // 2] ^= 0x01
            tampered_id = os.urandom(16)
            await party.endpoint.publish_sealed(
                REQUEST_EXCHANGE, NETWORK_ROUTING_KEY, bytes(tampered), tampered_id,
                msg_type=own.MSG_TYPE,
            )
            reason = await dead_letter_reason(mgmt, tampered_id.hex())
            self.check(
                reason is not None, f"a tampered envelope was dead-lettered, reason: {reason}"
            )
        finally:
            await rogue.stop()
            await party.close()

    def broker_settings(
        self, pki: PkiLayout, endpoint: BrokerEndpoint, name: str
    ) -> BrokerSettings:
        party = pki.party(name)
        return BrokerSettings(
            host=endpoint.host, port=endpoint.port, vhost=endpoint.vhost, identity=name,
            ca_file=pki.ca_cert, cert_file=party.tls_cert, key_file=party.tls_key,
        )

    def security(self, pki: PkiLayout, name: str) -> SecuritySettings:
        return SecuritySettings(
            key_dir=pki.party_dir(name), trust_dir=pki.root,
            replay_sqlite_path=self.work / f"replay-demo-{name}.sqlite3",
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(port: int, name: str, labels: str) -> float:
    """Sum of one metric's samples whose labels contain ``labels`` (Prometheus text format)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(part in line for part in labels.split(",")):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)


async def dead_letter_reason(
    mgmt: Management, message_id: str, timeout: float = 15.0
) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in mgmt.get_messages("akma", DEAD_LETTER_QUEUE, requeue=True):
            props: dict[str, Any] = item.get("properties", {})
            if props.get("message_id") == message_id:
                reason = props.get("headers", {}).get("x-akma-reason")
                return str(reason) if reason is not None else None
        await asyncio.sleep(0.3)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pki", default="var/pki")
    parser.add_argument("--broker-dir", default="var/broker")
    parser.add_argument("--work", default="var/demo")
    parser.add_argument("--keep-broker", action="store_true",
                        help="leave the broker running to explore the management UI "
                             "(stop it with `make broker-down`)")
    args = parser.parse_args()
    work = Path(args.work)
    # Each run starts from empty worker state; the PKI and the broker's data are reused.
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    demo = Demo(Path(args.pki), Path(args.broker_dir), work, args.keep_broker)
    try:
        asyncio.run(demo.run())
    except Exception as exc:  # noqa: BLE001 - report, then still shut everything down
        demo.failures.append(repr(exc))
        print(f"\nerror: {exc!r}", file=sys.stderr)
    finally:
        demo.step("Shutting down")
        demo.shutdown()
    if demo.failures:
        print(f"\nDEMO FAILED: {len(demo.failures)} check(s) failed", file=sys.stderr)
        return 1
    print("\nDemo complete: every check held.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
