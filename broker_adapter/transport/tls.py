"""TLS client context for the broker: verifies the broker, presents our certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

from broker_adapter.errors import BrokerConfigError


def client_ssl_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Build a TLS 1.2+ client context that verifies the broker against the deployment CA only.

    We never load the system trust store: the broker must be issued by the deployment CA, so a
    certificate from any public CA (or a man in the middle holding one) is refused.
    """
    for path in (ca_file, cert_file, key_file):
        if not Path(path).is_file():
            raise BrokerConfigError(f"missing TLS material: {path}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
        ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (ssl.SSLError, OSError) as exc:
        raise BrokerConfigError(f"cannot load TLS material: {exc}") from exc
    return ctx
