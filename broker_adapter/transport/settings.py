"""Connection settings for one party's broker client.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class BrokerSettings(BaseModel):
    """Where the broker is and which certificate this party logs in with.

    ``identity`` must equal the CN of ``cert_file``: the broker logs the client in as that CN
    (EXTERNAL mechanism) and validates the ``user_id`` of every publish against it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=5671, ge=1, le=65535)
    vhost: str = "akma"
    identity: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    # The broker certificate must name this host (SAN); defaults to ``host``.
    server_hostname: str | None = None
    heartbeat_s: int = Field(default=30, ge=0)
    connect_timeout_s: float = Field(default=15.0, gt=0)
    # How long the robust connection waits between reconnection attempts.
    reconnect_interval_s: float = Field(default=1.0, gt=0)
    publish_timeout_s: float = Field(default=10.0, gt=0)
