"""Helpers shared by the integration tests: party connections and the management HTTP API."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from typing import Any
from urllib.parse import quote

from broker_adapter.transport import BrokerSettings
from infra.pki import PkiLayout


def party_settings(broker: Any, pki: PkiLayout, name: str, **overrides: Any) -> BrokerSettings:
    """Broker settings for party ``name`` logging in with its own dev-PKI certificate."""
    paths = pki.party(name)
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "vhost": broker.vhost,
        "identity": name,
        "ca_file": pki.ca_cert,
        "cert_file": paths.tls_cert,
        "key_file": paths.tls_key,
        "reconnect_interval_s": 0.5,
    }
    values.update(overrides)
    return BrokerSettings(**values)


class Management:
    """The management API as an operator uses it (HTTPS, admin password, deployment CA)."""

    def __init__(self, base_url: str, password: str, ca_file: str, user: str = "admin") -> None:
        self._base = base_url.rstrip("/")
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._ctx = ssl.create_default_context(cafile=ca_file)

    def call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self._base + path,
            data=data,
            method=method,
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=self._ctx, timeout=15) as response:
            body = response.read()
        return json.loads(body) if body else None

    def get_messages(self, vhost: str, queue: str, count: int = 100) -> list[dict[str, Any]]:
        """Take messages off a queue (ack mode), as 'Get messages' in the UI does."""
        path = f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}/get"
        result = self.call(
            "POST", path, {"count": count, "ackmode": "ack_requeue_false", "encoding": "base64"}
        )
        assert isinstance(result, list)
        return result

    def queue(self, vhost: str, queue: str) -> dict[str, Any]:
        result = self.call("GET", f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}")
        assert isinstance(result, dict)
        return result

    def purge(self, vhost: str, queue: str) -> None:
        self.call("DELETE", f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}/contents")
