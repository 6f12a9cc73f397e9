"""Helpers shared by the integration tests: party connections and the management HTTP API."""

from __future__ import annotations

from typing import Any

from broker_adapter.transport import BrokerSettings
from infra.management import Management
from infra.pki import PkiLayout

__all__ = ["Management", "party_settings"]


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


DLX = "akma.dlx"
