"""Where a running broker is and which PKI it trusts: what tests and the demo connect to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.pki import PkiLayout

DEFAULT_VHOST = "akma"


@dataclass(frozen=True)
class BrokerEndpoint:
    """A TLS broker with certificate login (EXTERNAL), whichever way it was started.

    ``host`` is also the name to verify the broker certificate against: the dev server
    certificate carries ``localhost`` and ``127.0.0.1``.
    """

    host: str
    port: int
    vhost: str
    management_url: str | None
    ca: Path
    pki: PkiLayout

    @property
    def amqp_url(self) -> str:
        return f"amqps://{self.host}:{self.port}/{self.vhost}?auth=external"

    def admin_password(self) -> str:
        return self.pki.admin_password()
